"""A VM class a third party derives from DispVM is disposable like DispVM.

What makes a VM disposable belongs to DispVM (not to its class name), so a
subclass installed as a plugin gets it all: its name, addresses, volumes,
persistence and icon, its clean-up when a run ends (a stop, a failed start),
and the removal at qubesd's start of one an unclean stop left behind. The VMs
run on libvirt's test driver with file-reflink storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from qubes_core import exc
from qubes_core.vm import dispvm
from qubes_core.vm.dispvm import DispVM
from tests.unit.runtime.support import squat

PLUGIN = '''
from qubes_core.vm.dispvm import DispVM


class KioskVM(DispVM):
    """A third party's disposable VM."""
'''


@pytest.fixture
def kiosk_app(lifecycle_app: Any, install_plugin: Any) -> Any:
    """The basic installation with the KioskVM plugin installed and ``work`` a template
    for DispVMs."""
    install_plugin("kiosk_plugin", PLUGIN, """\
        [qubes_core.vm]
        KioskVM = kiosk_plugin:KioskVM
        """)
    lifecycle_app.domains["work"].template_for_dispvms = True
    return lifecycle_app


def images_of(app: Any, vm: Any) -> Path:
    return Path(app.pools["varlibqubes"].config["dir_path"]) / "appvms" / vm.name


def names_in_store(app: Any) -> list[str]:
    tree = etree.parse(str(app.store.path))
    return tree.xpath("//domain/properties/property[@name='name']/text()")


async def test_a_plugin_dispvm_is_disposable_and_removed_when_it_stops(kiosk_app: Any) -> None:
    app = kiosk_app
    kiosk = app.add_new_vm("KioskVM", template=app.domains["work"], label="red",
                           auto_cleanup=True)
    assert type(kiosk).__name__ == "KioskVM" and isinstance(kiosk, DispVM)
    assert kiosk.name == f"disp{kiosk.dispid}"
    assert kiosk.ip.startswith("10.138.")
    assert kiosk.icon == "dispvm-red"
    assert kiosk.volume_config["private"]["snap_on_start"]
    assert not kiosk.volume_config["private"]["save_on_stop"]
    await kiosk.storage.create()
    images = images_of(app, kiosk)
    assert images.is_dir()
    app.save()
    assert kiosk.name in names_in_store(app)
    await kiosk.start()
    assert kiosk.qdb.read("/qubes-vm-persistence") == b"none"
    await kiosk.kill()
    assert kiosk.name not in app.domains
    assert not images.exists() or list(images.glob("*.img*")) == []
    assert kiosk.name not in names_in_store(app)


async def test_a_plugin_dispvm_that_fails_to_start_is_removed(kiosk_app: Any) -> None:
    app = kiosk_app
    app.domains["work"].netvm = None
    kiosk = app.add_new_vm("KioskVM", template=app.domains["work"], label="red",
                           auto_cleanup=True)
    await kiosk.storage.create()
    squat(app, kiosk.name)  # a running domain of its name: libvirt refuses the start
    with pytest.raises(exc.QubesVMError, match="another libvirt domain"):
        await kiosk.start()
    assert kiosk.name not in app.domains
    images = images_of(app, kiosk)
    assert not images.exists() or list(images.glob("*.img*")) == []


async def test_a_stale_plugin_dispvm_is_removed_like_a_dispvm(kiosk_app: Any) -> None:
    """What qubesd does at its start: auto_cleanup DispVMs that do not run go."""
    app = kiosk_app
    work = app.domains["work"]
    stale = app.add_new_vm("KioskVM", template=work, label="red", auto_cleanup=True)
    kept = app.add_new_vm("KioskVM", template=work, label="red", auto_cleanup=False)
    for vm in (stale, kept):
        await vm.storage.create()
    app.save()
    assert await dispvm.remove_stale(app) == [stale.name]
    assert stale.name not in app.domains and kept.name in app.domains
    assert stale.name not in names_in_store(app)
