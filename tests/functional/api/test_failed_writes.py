"""A write that fails leaves the model as it was: checks and fallible work come first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from qubes_core import exc
from qubes_core.storage import Pool


class DirectoryPool(Pool):
    """A pool that owns one directory and takes it away when removed.

    Its teardown fails, as a real one would, while files are left in the
    directory (``rmdir`` refuses a directory that is not empty).
    """

    driver = "directory"

    def destroy(self) -> None:
        os.rmdir(self.config["dir_path"])


async def test_pool_whose_teardown_fails_stays(api: Any, tmp_path: Path) -> None:
    directory = tmp_path / "scratch-pool"
    directory.mkdir()
    (directory / "left-behind").write_text("data")
    api.app.pools["scratch"] = DirectoryPool("scratch", dir_path=str(directory))
    api.app.save()
    before = api.app.store.path.read_bytes()
    with pytest.raises(exc.StoragePoolException, match="cannot remove pool 'scratch'"):
        await api.call("admin.pool.Remove", "dom0", "scratch")
    assert "scratch" in (await api.call("admin.pool.List")).split()
    assert api.app.store.path.read_bytes() == before
    # Once its directory can go, the pool goes too.
    (directory / "left-behind").unlink()
    await api.call("admin.pool.Remove", "dom0", "scratch")
    assert "scratch" not in (await api.call("admin.pool.List")).split()
    assert not directory.exists()


async def test_pool_in_use_is_refused_before_its_teardown(api: Any, tmp_path: Path) -> None:
    directory = tmp_path / "used-pool"
    directory.mkdir()
    api.app.pools["used"] = DirectoryPool("used", dir_path=str(directory))
    api.app.domains["work"].volume_config["private"]["pool"] = "used"
    with pytest.raises(exc.QubesPoolInUseError, match="used by: work"):
        await api.call("admin.pool.Remove", "dom0", "used")
    assert directory.exists() and "used" in api.app.pools


@pytest.mark.parametrize("payload", [
    "name=new label=red pool=nopool",
    "name=new label=red pool:private=nopool",
    "name=new label=red pool:nosuchvolume=varlibqubes",
])
async def test_create_with_a_bad_pool_never_adds_the_vm(api: Any, payload: str) -> None:
    added: list[str] = []
    api.app.add_handler("domain-add", lambda app, event, vm, **kw: added.append(vm.name))
    qids = sorted(vm.qid for vm in api.app.domains)
    with pytest.raises(exc.QubesValueError):
        await api.call("admin.vm.CreateInPool.AppVM", "dom0", "", payload)
    assert added == []
    assert "new" not in api.app.domains
    assert sorted(vm.qid for vm in api.app.domains) == qids
