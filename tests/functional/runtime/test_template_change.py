"""A VM follows its template: changing it re-bases every snapshot volume, for good.

Through the Admin API, on file-reflink storage and libvirt's test driver: the
AppVM's ``template``, the template of a DispVM's AppVM and ``default_template``
(for the AppVMs that take their template from it). Each change is refused while
a VM it would re-base runs; an AppVM never ends up without a template; and a
template that is still a volume's source cannot be removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from tests.functional.api.conftest import Harness

MARK_OLD = b"old template root"
MARK_NEW = b"new template root"


@pytest.fixture
async def api(lifecycle_app: Any, tmp_path: Path) -> Harness:
    """Two templates with different roots; ``work`` on debian-12, no network."""
    app = lifecycle_app
    for vm in app.domains:
        if vm.qid != 0:
            vm.netvm = None
    app.default_netvm = None
    fedora = app.add_new_vm("TemplateVM", name="fedora-41", label="black")
    await fedora.storage.create()
    _mark(app.domains["debian-12"], MARK_OLD)
    _mark(fedora, MARK_NEW)
    app.save()
    return Harness(app, tmp_path)


def _mark(template: Any, data: bytes) -> None:
    with open(template.volumes["root"].path_clean, "r+b") as image:
        image.write(data)


def _started_root(vm: Any) -> bytes:
    with open(vm.volumes["root"].block_device(), "rb") as image:
        return image.read(len(MARK_NEW))


def _sources(vm: Any) -> dict[str, str]:
    return {name: config.get("source", "") for name, config in sorted(vm.volume_config.items())
            if config.get("snap_on_start")}


def _reloaded(app: Any) -> Qubes:
    return Qubes(app.store.path, lock=False)


async def test_template_change_rebases_the_root_and_persists(api: Harness) -> None:
    app = api.app
    await api.call("admin.vm.property.Set", "work", "template", "fedora-41")
    work = app.domains["work"]
    assert _sources(work) == {"root": "vm-templates/fedora-41/root"}
    assert work.volumes["root"].source.vid == "vm-templates/fedora-41/root"
    assert _sources(_reloaded(app).domains["work"]) == {"root": "vm-templates/fedora-41/root"}
    await work.start()
    assert _started_root(work) == MARK_NEW
    await work.kill()
    # The old template serves nobody now: it can go, and work still starts.
    app.default_template = app.domains["fedora-41"]
    await api.call("admin.vm.Remove", "debian-12")
    await work.start()
    assert _started_root(work) == MARK_NEW


async def test_template_change_is_refused_while_the_vm_runs(api: Harness) -> None:
    work = api.app.domains["work"]
    await work.start()
    with pytest.raises(exc.QubesVMNotHaltedError):
        await api.call("admin.vm.property.Set", "work", "template", "fedora-41")
    assert work.template.name == "debian-12"
    assert _sources(work) == {"root": "vm-templates/debian-12/root"}


async def test_dispvms_follow_their_appvm_template(api: Harness) -> None:
    app = api.app
    await api.call("admin.vm.property.Set", "work", "template_for_dispvms", "True")
    disp = app.add_new_vm("DispVM", template=app.domains["work"])
    await disp.storage.create()
    assert _sources(disp)["root"] == "vm-templates/debian-12/root"
    await disp.start()
    with pytest.raises(exc.QubesVMNotHaltedError, match=disp.name):
        await api.call("admin.vm.property.Set", "work", "template", "fedora-41")
    assert _sources(disp)["root"] == "vm-templates/debian-12/root"
    await disp.kill()
    await api.call("admin.vm.property.Set", "work", "template", "fedora-41")
    assert _sources(disp) == {"private": "appvms/work/private",
                              "root": "vm-templates/fedora-41/root"}
    assert _sources(_reloaded(app).domains[disp.name])["root"] == "vm-templates/fedora-41/root"
    await disp.start()
    assert _started_root(disp) == MARK_NEW


async def test_default_template_change_rebases_its_followers(api: Harness) -> None:
    app = api.app
    work = app.domains["work"]
    pinned = app.add_new_vm("AppVM", name="pinned", label="red", netvm=None,
                            template=app.domains["debian-12"])
    await pinned.storage.create()
    await work.start()
    with pytest.raises(exc.QubesVMNotHaltedError, match="work"):
        await api.call("admin.property.Set", "dom0", "default_template", "fedora-41")
    assert app.default_template.name == "debian-12"
    await work.kill()
    await api.call("admin.property.Set", "dom0", "default_template", "fedora-41")
    assert work.template.name == "fedora-41"
    assert _sources(work) == {"root": "vm-templates/fedora-41/root"}
    assert _sources(pinned) == {"root": "vm-templates/debian-12/root"}  # set its own
    assert _sources(_reloaded(app).domains["work"]) == {"root": "vm-templates/fedora-41/root"}
    await work.start()
    assert _started_root(work) == MARK_NEW


async def test_an_appvm_never_loses_its_template(api: Harness) -> None:
    app = api.app
    for name in ("work", "sys-net", "sys-firewall"):
        await api.call("admin.vm.property.Set", name, "template", "fedora-41")
    app.default_template = None
    with pytest.raises(exc.QubesException, match="default_template"):
        await api.call("admin.vm.property.Reset", "work", "template")
    assert app.domains["work"].template.name == "fedora-41"
    # Nor through the default it follows.
    await api.call("admin.property.Set", "dom0", "default_template", "fedora-41")
    await api.call("admin.vm.property.Reset", "work", "template")
    for method, payload in (("admin.property.Reset", None), ("admin.property.Set", "")):
        with pytest.raises(exc.QubesException, match="work"):
            if payload is None:
                await api.call(method, "dom0", "default_template")
            else:
                await api.call(method, "dom0", "default_template", payload)
    assert app.domains["work"].template.name == "fedora-41"
    assert _reloaded(app).domains["work"].template.name == "fedora-41"


async def test_a_template_still_used_as_a_volume_source_cannot_be_removed(
        api: Harness) -> None:
    app = api.app
    work = app.domains["work"]
    # As an older qubes.xml may have it: the template changed, the root did not.
    work._property_values["template"] = app.domains["fedora-41"]
    app.default_template = app.domains["fedora-41"]
    with pytest.raises(exc.QubesVMInUseError, match="work"):
        await api.call("admin.vm.Remove", "debian-12")
    assert "debian-12" in app.domains
    assert os.path.exists(app.domains["debian-12"].volumes["root"].path_clean)
