"""An import and a start never overlap: a volume being imported into does not start,
and a volume a VM runs on takes no import; the acknowledged import is what stays.

Through the Admin API on file-reflink storage and libvirt's test driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qubes_core import exc
from tests.functional.api.conftest import Harness

IMPORTED = b"imported private image"


@pytest.fixture
async def api(lifecycle_app: Any, tmp_path: Path) -> Harness:
    lifecycle_app.domains["work"].netvm = None
    return Harness(lifecycle_app, tmp_path)


def _private(vm: Any) -> bytes:
    with open(vm.volumes["private"].path_clean, "rb") as image:
        return image.read(len(IMPORTED))


async def _begin(api: Harness) -> str:
    path = await api.call("internal.vm.volume.ImportBegin", "work", "private", "1048576",
                          kind="internal")
    with open(path, "r+b") as image:
        image.write(IMPORTED)
    return path


async def test_a_volume_being_imported_into_does_not_start(api: Harness) -> None:
    work = api.app.domains["work"]
    await _begin(api)
    with pytest.raises(exc.QubesException, match="import into it is in progress"):
        await api.call("admin.vm.Start", "work")
    assert work.get_power_state() == "Halted"
    assert not work.volumes["private"].in_use()
    await api.call("internal.vm.volume.ImportEnd", "work", "private", "ok", kind="internal")
    assert _private(work) == IMPORTED
    await api.call("admin.vm.Start", "work")
    await api.call("admin.vm.Kill", "work")
    assert _private(work) == IMPORTED


async def test_an_abandoned_import_blocks_the_start_until_it_is_ended(api: Harness) -> None:
    work = api.app.domains["work"]
    await _begin(api)
    work.__dict__.pop("_storage")  # as after a restart of qubesd: only the files tell
    with pytest.raises(exc.QubesException, match="in progress"):
        await api.call("admin.vm.Start", "work")
    await api.call("internal.vm.volume.ImportEnd", "work", "private", "fail", kind="internal")
    assert _private(work) != IMPORTED
    await api.call("admin.vm.Start", "work")
    assert work.get_power_state() == "Running"


async def test_a_running_volume_takes_no_import(api: Harness) -> None:
    work = api.app.domains["work"]
    await api.call("admin.vm.Start", "work")
    with pytest.raises(exc.QubesVMNotHaltedError):
        await api.call("internal.vm.volume.ImportBegin", "work", "private", "1048576",
                       kind="internal")
    with pytest.raises(exc.QubesVMNotHaltedError):
        await api.call("internal.vm.volume.ImportEnd", "work", "private", "ok",
                       kind="internal")
    # Below the API too: the volume refuses to commit an import while it is in use.
    volume = work.volumes["private"]
    with pytest.raises(exc.StoragePoolException, match="in use"):
        await volume.import_data_end(True)
    await api.call("admin.vm.Kill", "work")
    assert _private(work) != IMPORTED
