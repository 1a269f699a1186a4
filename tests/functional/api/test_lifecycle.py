"""Power methods with libvirt's test driver as the runtime."""

from __future__ import annotations

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.backend import make_runtime
from tests.functional.api.conftest import Harness


@pytest.fixture
async def live_api(tmp_path):
    runtime = make_runtime("test")  # libvirt-python is a dependency: no guard
    app = Qubes.create_empty_store(tmp_path / "qubes.xml", runtime=runtime, setup_check="auto")
    runtime.bind(app)
    harness = Harness(app, tmp_path)
    await harness.call("admin.vm.Create.TemplateVM", "dom0", "", "name=debian-12 label=black")
    await harness.call("admin.property.Set", "dom0", "default_template", "debian-12")
    await harness.call("admin.vm.Create.AppVM", "dom0", "", "name=work label=blue")
    yield harness
    for vm in list(app.domains):
        if vm.qid and vm.is_running():
            await vm.kill()
    runtime.close()
    app.close()


def state_of(listing: str, name: str) -> str:
    for line in listing.splitlines():
        if line.startswith(name + " "):
            return dict(f.split("=", 1) for f in line.split()[1:])["state"]
    raise AssertionError(name)


async def test_start_pause_kill(live_api):
    api = live_api
    await api.call("admin.vm.Start", "work")
    assert state_of(await api.call("admin.vm.List"), "work") == "Running"
    assert "power_state=Running" in await api.call("admin.vm.CurrentState", "work")
    start_time = await api.call("admin.vm.property.Get", "work", "start_time")
    assert start_time.startswith("default=True type=str ") and len(start_time) > 23
    with pytest.raises(exc.QubesVMNotHaltedError):
        await api.call("admin.vm.Remove", "work")
    await api.call("admin.vm.Pause", "work")
    assert state_of(await api.call("admin.vm.List"), "work") == "Paused"
    await api.call("admin.vm.Unpause", "work")
    await api.call("admin.vm.Kill", "work")
    assert state_of(await api.call("admin.vm.List"), "work") == "Halted"
    assert await api.call("admin.vm.property.Get", "work", "start_time") == (
        "default=True type=str ")


async def test_shutdown_wait(live_api):
    api = live_api
    await api.call("admin.vm.Start", "work")
    await api.call("admin.vm.Shutdown", "work", "wait")
    assert state_of(await api.call("admin.vm.List"), "work") == "Halted"


async def test_disposable_removed_after_kill(live_api):
    api = live_api
    await api.call("admin.vm.property.Set", "work", "template_for_dispvms", "True")
    name = await api.call("admin.vm.CreateDisposable", "work")
    await api.call("admin.vm.Start", name)
    await api.call("admin.vm.Kill", name)
    assert name not in (await api.call("admin.vm.List"))
    reloaded = Qubes(api.app.store.path, lock=False)
    assert name not in reloaded.domains
    reloaded.close()
