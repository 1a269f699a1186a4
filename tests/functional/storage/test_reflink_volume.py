"""The file-reflink driver on real filesystems: XFS and btrfs (reflinks), ext4 (fallback).

Each test runs on every filesystem of its ``pool`` fixture; where the result
differs by filesystem (extents shared or not) the test says which it expects.
"""

from __future__ import annotations

import datetime
import logging
import os
import re

import pytest

from qubes_core.storage import StoragePoolException
from tests.functional.storage.extents import data_bytes, physical_ranges, shared_bytes
from tests.functional.storage.helpers import MiB, digest, files_of, fill, read_at, volume

REVISION_RE = re.compile(r"^private\.img\.(\d+)@(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")


def reflinks(pool) -> bool:
    return pool.fstype != "ext4"


async def test_create_start_stop_layout(pool):
    vol = volume(pool, "appvms/work/private", revisions_to_keep=1)
    await vol.create()
    base = os.path.join(pool.dir_path, "appvms/work")
    assert files_of(base) == ["private.img"]
    clean = vol.path_clean
    assert os.stat(clean).st_size == 64 * MiB
    assert os.stat(clean).st_blocks == 0, "a new image is all holes"

    await vol.start()
    assert files_of(base) == ["private-dirty.img", "private.img"]
    assert vol.is_dirty() and vol.block_device() == vol.path_dirty
    data = fill(vol.path_dirty, b"generation-1 ")
    mtime_before = os.stat(clean).st_mtime

    await vol.stop()
    names = files_of(base)
    revisions = [n for n in names if REVISION_RE.match(n)]
    assert len(revisions) == 1
    number, stamp = REVISION_RE.match(revisions[0]).groups()
    assert number == "1"
    expected = datetime.datetime.fromtimestamp(mtime_before, datetime.UTC)
    assert stamp == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert vol.revisions == {"1": stamp}
    assert "private-dirty.img" not in names and not vol.is_dirty()
    assert read_at(clean, 0, len(data)) == data
    if reflinks(pool):
        assert "private-precache.img" in names
        assert shared_bytes(vol.path_precache) >= len(data)
        assert physical_ranges(vol.path_precache) == physical_ranges(clean)
    else:
        assert "private-precache.img" not in names


async def test_start_snapshot_shares_extents(pool):
    vol = volume(pool, "appvms/a/private")
    await vol.create()
    await vol.start()
    data = fill(vol.path_dirty, b"payload ", 16 * MiB)
    await vol.stop()
    await vol.start()
    assert read_at(vol.path_dirty, 0, len(data)) == data
    if reflinks(pool):
        assert shared_bytes(vol.path_dirty) == data_bytes(vol.path_dirty) >= len(data)
        assert physical_ranges(vol.path_dirty) == physical_ranges(vol.path_clean)
    else:
        assert shared_bytes(vol.path_dirty) == 0
        assert physical_ranges(vol.path_dirty).isdisjoint(physical_ranges(vol.path_clean))
    await vol.stop()


async def test_snap_on_start_links_source_and_detects_outdated(pool):
    template = volume(pool, "vm-templates/t/root", revisions_to_keep=2)
    await template.create()
    await template.start()
    data = fill(template.path_dirty, b"template v1 ")
    await template.stop()

    root = volume(pool, "appvms/work/root", snap_on_start=True, source=template,
                  size=1 * MiB)
    assert root.size == 64 * MiB, "a snapshot is at least as large as its source"
    assert await root.verify()
    await root.start()
    assert os.stat(root.path_clean).st_ino == os.stat(template.path_clean).st_ino
    assert read_at(root.path_dirty, 0, len(data)) == data
    assert os.stat(root.path_dirty).st_size == 64 * MiB
    if reflinks(pool):
        assert shared_bytes(root.path_dirty) >= len(data)
    assert not root.is_outdated()
    assert not root.is_dirty(), "a snapshot never holds changes to commit"

    await template.start()
    fill(template.path_dirty, b"template v2 ")
    await template.stop()
    assert root.is_outdated()
    assert read_at(root.path_dirty, 0, len(data)) == data, "the running snapshot is unchanged"

    await root.stop()
    assert not os.path.exists(root.path_clean) and not os.path.exists(root.path_dirty)
    await root.start()
    assert not root.is_outdated()
    await root.stop()


async def test_volatile_is_fresh_each_start(pool):
    vol = volume(pool, "appvms/v/volatile", save_on_stop=False, size=32 * MiB)
    await vol.create()
    assert not os.path.exists(vol.path_clean)
    await vol.start()
    fill(vol.path_dirty, b"scratch ")
    await vol.stop()
    assert files_of(os.path.dirname(vol.path_dirty)) == []
    await vol.start()
    assert os.stat(vol.path_dirty).st_blocks == 0 and os.stat(vol.path_dirty).st_size == 32 * MiB
    await vol.stop()


@pytest.mark.parametrize("keep", [0, 1, 3])
async def test_revision_rotation_many_revisions(pool, keep):
    vol = volume(pool, "appvms/r/private", revisions_to_keep=keep, size=4 * MiB)
    await vol.create()
    contents = {}
    for generation in range(1, 13):
        await vol.start()
        fill(vol.path_dirty, f"gen {generation:03d} ".encode(), 1 * MiB)
        await vol.stop()
        contents[generation] = digest(vol.path_clean)
    revisions = vol.revisions
    assert len(revisions) == keep
    # Revision N holds the clean image that generation N replaced, i.e. generation N - 1
    # (revision 1 is the empty image of creation).
    assert list(revisions) == [str(n) for n in range(13 - keep, 13)]
    for number, stamp in revisions.items():
        assert digest(vol.path_revision(number, stamp)) == contents[int(number) - 1]
    on_disk = [n for n in files_of(os.path.dirname(vol.path_clean)) if REVISION_RE.match(n)]
    assert len(on_disk) == keep


async def test_revert_to_any_kept_revision_and_back(pool):
    vol = volume(pool, "appvms/rv/private", revisions_to_keep=4, size=4 * MiB)
    await vol.create()
    digests = []
    for generation in range(5):
        await vol.start()
        fill(vol.path_dirty, f"generation {generation} ".encode(), 1 * MiB)
        await vol.stop()
        digests.append(digest(vol.path_clean))
    assert list(vol.revisions) == ["2", "3", "4", "5"]  # gens 0..3 replaced by gens 1..4

    await vol.start()
    with pytest.raises(StoragePoolException, match="in use"):
        await vol.revert("3")
    assert list(vol.revisions) == ["2", "3", "4", "5"]
    await vol.stop()  # commits generation 5 (= generation 4's data)
    current = digest(vol.path_clean)

    await vol.revert("3")
    assert digest(vol.path_clean) == digests[1]
    assert "3" not in vol.revisions
    newest = list(vol.revisions)[-1]
    assert digest(vol.path_revision(newest, vol.revisions[newest])) == current
    await vol.revert()  # the latest: the image we reverted away from
    assert digest(vol.path_clean) == current

    with pytest.raises(StoragePoolException, match="no revision '99'"):
        await vol.revert("99")
    assert digest(vol.path_clean) == current


async def test_revert_without_revisions_is_refused(pool):
    vol = volume(pool, "appvms/nr/private", revisions_to_keep=0)
    await vol.create()
    with pytest.raises(StoragePoolException, match="no revisions"):
        await vol.revert()


async def test_discard_frees_blocks_and_survives_commit(pool):
    vol = volume(pool, "appvms/d/private", size=64 * MiB)
    await vol.create()
    await vol.start()
    fill(vol.path_dirty, b"to be discarded ", 32 * MiB)
    await vol.stop()
    allocated = os.stat(vol.path_clean).st_blocks * 512
    assert allocated >= 32 * MiB

    await vol.start()
    fd = os.open(vol.path_dirty, os.O_RDWR)
    try:  # what a VM's discard (unmap) does to the image file
        _punch_hole(fd, 8 * MiB, 16 * MiB)
    finally:
        os.close(fd)
    slack = 1 * MiB  # extent metadata the filesystem may count
    assert os.stat(vol.path_dirty).st_blocks * 512 <= allocated - 16 * MiB + slack
    await vol.stop()
    clean_allocated = os.stat(vol.path_clean).st_blocks * 512
    assert clean_allocated <= allocated - 16 * MiB + slack
    fd = os.open(vol.path_clean, os.O_RDONLY)
    try:
        assert os.lseek(fd, 8 * MiB, os.SEEK_HOLE) == 8 * MiB
        assert os.lseek(fd, 8 * MiB, os.SEEK_DATA) == 24 * MiB
    finally:
        os.close(fd)
    assert read_at(vol.path_clean, 8 * MiB, 4096) == bytes(4096)
    # The next start's copy keeps the hole too (a sparse copy on ext4).
    await vol.start()
    assert os.stat(vol.path_dirty).st_blocks * 512 <= allocated - 16 * MiB + slack
    await vol.stop()


def _punch_hole(fd: int, offset: int, length: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    falloc_fl_keep_size, falloc_fl_punch_hole = 0x01, 0x02
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong,
                               ctypes.c_longlong]
    if libc.fallocate(fd, falloc_fl_keep_size | falloc_fl_punch_hole, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate(PUNCH_HOLE) failed")


async def test_resize_grows_and_refuses_to_shrink(pool):
    vol = volume(pool, "appvms/s/private", size=16 * MiB, revisions_to_keep=1)
    await vol.create()
    await vol.start()
    data = fill(vol.path_dirty, b"keep me ", 4 * MiB)
    await vol.stop()
    revision = vol.path_revision(*next(iter(vol.revisions.items())))
    revision_size = os.stat(revision).st_size

    await vol.resize(32 * MiB)
    assert vol.size == 32 * MiB and vol.config["size"] == 32 * MiB
    assert os.stat(vol.path_clean).st_size == 32 * MiB
    assert read_at(vol.path_clean, 0, len(data)) == data
    assert os.stat(revision).st_size == revision_size, "revisions keep their size"

    with pytest.raises(StoragePoolException, match="shrink"):
        await vol.resize(8 * MiB)
    assert vol.size == 32 * MiB and os.stat(vol.path_clean).st_size == 32 * MiB

    await vol.start()
    await vol.resize(48 * MiB)
    assert os.stat(vol.path_dirty).st_size == 48 * MiB
    await vol.stop()
    assert os.stat(vol.path_clean).st_size == 48 * MiB


async def test_import_data_commit_and_abort(pool):
    vol = volume(pool, "appvms/i/private", size=8 * MiB, revisions_to_keep=1)
    await vol.create()
    before = digest(vol.path_clean)
    path = await vol.import_data(16 * MiB)
    assert path == vol.path_import and os.path.basename(path) == "private-import.img"
    fill(path, b"imported ", 2 * MiB)
    await vol.import_data_end(False)
    assert not os.path.exists(path) and digest(vol.path_clean) == before

    path = await vol.import_data(16 * MiB)
    data = fill(path, b"imported ", 2 * MiB)
    await vol.import_data_end(True)
    assert read_at(vol.path_clean, 0, len(data)) == data
    assert vol.size == 16 * MiB and not os.path.exists(vol.path_import)
    assert len(vol.revisions) == 1
    with pytest.raises(StoragePoolException, match="no import in progress"):
        await vol.import_data_end(True)


async def test_import_volume_same_pool_shares_extents(pool):
    src = volume(pool, "appvms/src/private")
    await src.create()
    await src.start()
    data = fill(src.path_dirty, b"source data ", 8 * MiB)
    await src.stop()
    dst = volume(pool, "appvms/dst/private", size=8 * MiB)
    await dst.create()
    await dst.import_volume(src)
    assert read_at(dst.path_clean, 0, len(data)) == data
    assert dst.size == 64 * MiB
    if reflinks(pool):
        assert physical_ranges(dst.path_clean) == physical_ranges(src.path_clean)


async def test_import_volume_across_filesystems_falls_back(reflink_pool, filesystems, caplog):
    from tests.functional.storage.conftest import new_pool

    other_fs = "btrfs" if reflink_pool.fstype == "xfs" else "xfs"
    foreign = new_pool(filesystems, other_fs)
    src = volume(foreign, "appvms/far/private")
    await src.create()
    await src.start()
    data = fill(src.path_dirty, b"far away ", 4 * MiB)
    await src.stop()
    dst = volume(reflink_pool, "appvms/near/private")
    await dst.create()
    with caplog.at_level(logging.INFO, logger="qubes.storage.reflink"):
        await dst.import_volume(src)
    assert read_at(dst.path_clean, 0, len(data)) == data
    assert any("sparse copy (EXDEV" in r.getMessage() for r in caplog.records)
    assert shared_bytes(dst.path_clean) == 0
    assert data_bytes(dst.path_clean) < 16 * MiB, "the copy stayed sparse"


async def test_snapshot_of_source_on_another_filesystem(reflink_pool, filesystems):
    from tests.functional.storage.conftest import new_pool

    other_fs = "btrfs" if reflink_pool.fstype == "xfs" else "xfs"
    foreign = new_pool(filesystems, other_fs)
    template = volume(foreign, "vm-templates/far/root")
    await template.create()
    await template.start()
    data = fill(template.path_dirty, b"far root ", 2 * MiB)
    await template.stop()
    root = volume(reflink_pool, "appvms/near/root", snap_on_start=True, source=template)
    await root.start()
    assert read_at(root.path_dirty, 0, len(data)) == data
    assert not root.is_outdated()
    await template.start()
    await template.stop()
    assert root.is_outdated()
    await root.stop()


async def test_leftovers_are_cleaned_and_logged(pool, caplog):
    vol = volume(pool, "appvms/l/private")
    await vol.create()
    await vol.start()
    fill(vol.path_dirty, b"x", 1 * MiB)
    await vol.stop()
    leftovers = [vol.path_clean + "~dead01", vol.path_dirty + "~dead02",
                 vol.path_import + "~dead03"]
    for path in leftovers:
        with open(path, "wb") as handle:
            handle.write(b"torn")
    # A precache that is not a copy of the current clean image.
    if os.path.exists(vol.path_precache):
        os.unlink(vol.path_precache)
    with open(vol.path_precache, "wb") as handle:
        handle.write(b"stale")
    with caplog.at_level(logging.INFO, logger="qubes.storage.reflink"):
        await vol.start()
    messages = [r.getMessage() for r in caplog.records]
    for path in leftovers:
        assert not os.path.exists(path)
        assert any(path in m and "leftover" in m for m in messages)
    assert any("stale precache" in m for m in messages)
    assert read_at(vol.path_dirty, 0, 1) == b"x", "the dirty image is a copy of the clean one"
    await vol.stop()


async def test_every_file_operation_is_logged_at_info(pool, caplog):
    vol = volume(pool, "appvms/log/private", revisions_to_keep=1)
    with caplog.at_level(logging.INFO, logger="qubes.storage.reflink"):
        await vol.create()
        await vol.start()
        await vol.stop()
        await vol.start()
        await vol.stop()
        await vol.remove()
    records = [r for r in caplog.records if r.name == "qubes.storage.reflink"]
    assert all(r.levelno == logging.INFO for r in records)
    text = "\n".join(r.getMessage() for r in records)
    assert "Copied file by" in text and "Renamed file" in text and "Removed file" in text
    assert f"Removed file: {vol.path_clean}" in text
    # Worked off the event loop, in worker threads.
    assert {r.threadName for r in records} - {"MainThread"}


async def test_remove_removes_everything(pool):
    vol = volume(pool, "appvms/gone/private", revisions_to_keep=3)
    await vol.create()
    for _ in range(3):
        await vol.start()
        await vol.stop()
    await vol.start()
    await vol.remove()
    assert not os.path.exists(os.path.dirname(vol.path_clean))
    assert vol.revisions == {}


async def test_crashed_run_resumes_on_its_dirty_image(pool):
    vol = volume(pool, "appvms/c/private")
    await vol.create()
    await vol.start()
    data = fill(vol.path_dirty, b"unsaved work ", 1 * MiB)
    # The VM (and qubesd) die here: no stop. The next start keeps the changes.
    again = volume(pool, "appvms/c/private")
    assert again.is_dirty()
    await again.start()
    assert read_at(again.path_dirty, 0, len(data)) == data
    await again.stop()
    assert read_at(again.path_clean, 0, len(data)) == data


async def test_usage_and_pool_figures(pool):
    vol = volume(pool, "appvms/u/private")
    await vol.create()
    assert vol.usage == 0
    await vol.start()
    fill(vol.path_dirty, b"u", 4 * MiB)
    assert vol.usage >= 4 * MiB
    await vol.stop()
    assert vol.usage >= 4 * MiB
    assert pool.size > pool.usage > 0
    info = pool.info()
    assert info["driver"] == "file-reflink" and int(info["size"]) == pool.size
