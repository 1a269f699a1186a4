"""Adding pools: declared options only, strict reflink check, nothing left behind on failure."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.storage import StoragePoolException
from qubes_core.storage.reflink import FileReflinkPool
from tests.functional.api.conftest import Harness
from tests.functional.storage.conftest import fs_dir
from tests.support import TIMEOUT, wait_until_async


def tree(path) -> list[str]:
    """Every file and directory under ``path``, relative to it."""
    found = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(found)


# --- a failed setup removes what it created, and only that -------------------------


def test_failed_reflink_check_removes_the_directories_it_made(app, filesystems):
    ext4 = fs_dir(filesystems, "ext4", "cleanup")
    (ext4 / "existing").mkdir()
    with pytest.raises(StoragePoolException, match="setup_check=no"):
        app.add_pool("slow", "file-reflink", dir_path=str(ext4 / "existing" / "a" / "b"))
    assert tree(ext4) == ["existing"], "a and a/b were made by the setup: gone again"
    assert "slow" not in app.pools


def test_failed_reflink_check_keeps_an_existing_directory_and_its_files(app, filesystems):
    ext4 = fs_dir(filesystems, "ext4", "cleanup")
    pool_dir = ext4 / "pool"
    (pool_dir / "appvms" / "old").mkdir(parents=True)
    (pool_dir / "appvms" / "old" / "private.img").write_bytes(b"data of an older pool")
    before = tree(ext4)
    with pytest.raises(StoragePoolException, match="setup_check=no"):
        app.add_pool("slow", "file-reflink", dir_path=str(pool_dir))
    assert tree(ext4) == before
    assert (pool_dir / "appvms" / "old" / "private.img").read_bytes() == b"data of an older pool"


def test_setup_error_of_the_filesystem_is_a_storage_error(app, filesystems):
    """dir_path under a plain file: the OSError reaches the caller as a pool error."""
    ext4 = fs_dir(filesystems, "ext4", "cleanup")
    (ext4 / "plain").write_text("a file, not a directory\n")
    with pytest.raises(StoragePoolException, match=r"pool 'broken': setup failed: .*"
                                                   r"Not a directory"):
        app.add_pool("broken", "file-reflink", dir_path=str(ext4 / "plain" / "pool"),
                     setup_check="no")
    assert tree(ext4) == ["plain"] and "broken" not in app.pools


async def test_api_pool_add_that_fails_the_check_leaves_nothing(app, filesystems, tmp_path):
    ext4 = fs_dir(filesystems, "ext4", "cleanup")
    api = Harness(app, tmp_path)
    app.save()
    before = app.store.path.read_bytes()
    with pytest.raises(StoragePoolException, match="setup_check=no"):
        await api.call("admin.pool.Add", arg="file-reflink",
                       payload=f"name=slow\ndir_path={ext4}/new/pool\n")
    assert tree(ext4) == []
    assert app.store.path.read_bytes() == before


async def test_api_pool_add_sets_the_pool_up_off_the_loop(app, filesystems, tmp_path,
                                                          monkeypatch):
    """While a pool is set up (a directory, a reflink probe with its syncs), qubesd
    answers other calls: the set-up is held until one has been answered."""
    xfs = fs_dir(filesystems, "xfs", "offloop")
    api = Harness(app, tmp_path)
    entered, answered = threading.Event(), threading.Event()
    real_setup = FileReflinkPool.setup

    def held_setup(pool: FileReflinkPool) -> None:
        entered.set()
        assert answered.wait(TIMEOUT), "no call was answered during the set-up"
        real_setup(pool)

    monkeypatch.setattr(FileReflinkPool, "setup", held_setup)
    add = asyncio.create_task(api.call("admin.pool.Add", arg="file-reflink",
                                       payload=f"name=fast\ndir_path={xfs}/p\n"))
    await wait_until_async(lambda: entered.is_set() or add.done(), what="the set-up")
    assert "fast" not in await api.call("admin.pool.List")
    answered.set()
    await add
    assert "fast" in (await api.call("admin.pool.List")).split()
    assert (xfs / "p").is_dir()


# --- each driver declares its options; unknown ones are refused when adding ----------


@pytest.mark.parametrize("driver, options, known", [
    ("file-reflink", {"setup_check": "no"},
     "dir_path, ephemeral_volatile, revisions_to_keep, setup_check"),
    ("file", {}, "dir_path, ephemeral_volatile, revisions_to_keep"),
    ("linux-kernel", {}, "dir_path"),
])
def test_add_pool_refuses_unknown_options_naming_the_known(app, filesystems, driver,
                                                          options, known):
    xfs = fs_dir(filesystems, "xfs", "options")
    with pytest.raises(exc.QubesValueError,
                       match=rf"pool 'odd': unknown option bogus for driver {driver} "
                             rf"\(known options: {known}\)"):
        app.add_pool("odd", driver, dir_path=str(xfs / "new"), bogus="1", **options)
    assert "odd" not in app.pools
    assert tree(xfs) == [], "refused before the setup made anything"


async def test_api_pool_add_refuses_unknown_options(app, filesystems, tmp_path):
    xfs = fs_dir(filesystems, "xfs", "options")
    api = Harness(app, tmp_path)
    app.save()
    before = app.store.path.read_bytes()
    with pytest.raises(exc.QubesValueError, match="unknown options bogus, colour"):
        await api.call("admin.pool.Add", arg="file-reflink",
                       payload=f"name=odd\ndir_path={xfs}/p\nbogus=1\ncolour=red\n")
    assert app.store.path.read_bytes() == before and "odd" not in app.pools
    assert tree(xfs) == []
    await api.call("admin.pool.Add", arg="file-reflink", payload=f"name=odd\ndir_path={xfs}/p\n")
    assert app.pools["odd"].config == {"dir_path": f"{xfs}/p", "revisions_to_keep": "1"}


def test_loading_keeps_unknown_options_of_existing_pools(app, filesystems, caplog):
    """A newer version's option in qubes.xml survives a load and a save, with a warning."""
    xfs = fs_dir(filesystems, "xfs", "options")
    app.add_pool("fast", "file-reflink", dir_path=str(xfs))
    app.save()
    path = app.store.path
    app.close()
    text = path.read_text()
    path.write_text(text.replace('name="fast"', 'name="fast" compression="zstd"'))
    with caplog.at_level(logging.WARNING, logger="qubes.storage"):
        loaded = Qubes(path)
    try:
        assert loaded.pools["fast"].config["compression"] == "zstd"
        assert ("pool fast: option compression is not known to driver file-reflink "
                "(known options: dir_path, ephemeral_volatile, revisions_to_keep, "
                "setup_check)") in caplog.text
        loaded.save()
        assert 'compression="zstd"' in path.read_text()
    finally:
        loaded.close()


# --- setup_check: strict unless the caller asks for "auto" ------------------------------


def test_new_store_on_ext4_is_refused_by_default(filesystems):
    base = fs_dir(filesystems, "ext4", "store")
    with pytest.raises(StoragePoolException, match="setup_check=no") as info:
        Qubes.create_empty_store(base / "qubes.xml", pool_dir=base)
    assert "setup_check=auto" in str(info.value)
    assert tree(base) == [], "no qubes.xml, no kernels' directory, the base dir kept"
    assert base.is_dir()


@pytest.mark.parametrize("fstype, outcome", [("ext4", "no"), ("xfs", "yes"), ("btrfs", "yes")])
def test_setup_check_auto_records_the_outcome(fstype, outcome, filesystems, caplog):
    base = fs_dir(filesystems, fstype, "store")
    with caplog.at_level(logging.WARNING, logger="qubes.storage.reflink"):
        app = Qubes.create_empty_store(base / "qubes.xml", pool_dir=base, setup_check="auto")
    try:
        assert app.pools["varlibqubes"].config["setup_check"] == outcome
        assert f'setup_check="{outcome}"' in (base / "qubes.xml").read_text()
        warned = "snapshots will be full sparse copies (setup_check=no recorded)"
        assert (warned in caplog.text) == (outcome == "no")
    finally:
        app.close()
    reloaded = Qubes(base / "qubes.xml", lock=False)
    assert reloaded.pools["varlibqubes"].config["setup_check"] == outcome


def test_setup_check_values_are_checked(app, filesystems):
    xfs = fs_dir(filesystems, "xfs", "store")
    with pytest.raises(exc.QubesValueError, match=r"setup_check='maybe' is not yes, no or auto"):
        app.add_pool("p", "file-reflink", dir_path=str(xfs / "p"), setup_check="maybe")
    assert tree(xfs) == []
