"""Storage without root: file operations on the test directory, configuration checks."""

from __future__ import annotations

import logging
import os

import pytest

from qubes_core import exc
from qubes_core.storage import (
    StoragePoolException,
    UnavailablePool,
    check_vid,
    fileops,
    make_pool,
    pool_drivers,
)
from qubes_core.storage.file import FilePool
from qubes_core.storage.kernel import LinuxKernelPool
from qubes_core.storage.reflink import FileReflinkPool

MiB = 1024**2


def write(path, offset, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_sparse_copy_keeps_holes_and_skips_zero_chunks(tmp_path):
    src = tmp_path / "src.img"
    with open(src, "wb") as handle:
        handle.truncate(64 * MiB)
    write(src, 8 * MiB, b"a" * MiB)
    write(src, 40 * MiB, bytes(8 * MiB))  # written zeros: data to the filesystem
    write(src, 60 * MiB, b"z" * 100)
    dst = tmp_path / "dst.img"
    how = fileops.copy_file(src, dst, reflink=False)
    assert how == "sparse copy"
    assert src.read_bytes() == dst.read_bytes()
    assert os.stat(dst).st_blocks * 512 <= 2 * MiB, "holes and zero chunks stayed holes"
    assert not list(tmp_path.glob("*~*"))


def test_copy_file_grows_to_size_and_is_atomic(tmp_path):
    src = tmp_path / "a.img"
    src.write_bytes(b"x" * 1000)
    dst = tmp_path / "b.img"
    dst.write_bytes(b"old")
    fileops.copy_file(src, dst, reflink=False, size=MiB)
    assert os.stat(dst).st_size == MiB and dst.read_bytes()[:1000] == b"x" * 1000


def test_failed_copy_leaves_no_temporary_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fileops.copy_file(tmp_path / "missing", tmp_path / "dst")
    assert list(tmp_path.iterdir()) == []


def test_operations_are_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="qubes.storage.reflink"):
        fileops.create_sparse_file(tmp_path / "a.img", MiB)
        fileops.copy_file(tmp_path / "a.img", tmp_path / "b.img", reflink=False)
        fileops.rename(tmp_path / "b.img", tmp_path / "c.img")
        fileops.remove(tmp_path / "c.img")
    text = "\n".join(r.getMessage() for r in caplog.records)
    for word in ("Created sparse file", "Copied file by sparse copy", "Renamed file",
                 "Removed file"):
        assert word in text


def test_remove_temp_files_only_touches_its_own(tmp_path):
    for name in ("private.img~1", "private.img~abc", "private-dirty.img~2", "root.img~3",
                 "private.img"):
        (tmp_path / name).write_bytes(b"")
    removed = fileops.remove_temp_files(tmp_path / "private.img")
    assert [os.path.basename(p) for p in removed] == ["private.img~1", "private.img~abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "private-dirty.img~2", "private.img", "root.img~3"]


@pytest.mark.parametrize("vid", ["../etc/passwd", "/abs/path", "a/../b", "a//b", "", "a b",
                                 "appvms/x/\nroot", "."])
def test_bad_volume_ids_are_refused(vid):
    with pytest.raises(StoragePoolException, match="invalid volume id"):
        check_vid(vid)


def test_good_volume_ids():
    assert check_vid("appvms/work-1/private") == "appvms/work-1/private"
    assert check_vid("vm-templates/debian_12.x/root") == "vm-templates/debian_12.x/root"


def test_drivers_are_plugins():
    drivers = pool_drivers()
    assert drivers["file-reflink"] is FileReflinkPool
    assert drivers["file"] is FilePool and drivers["linux-kernel"] is LinuxKernelPool


def test_unknown_driver_round_trips_but_is_unusable():
    pool = make_pool("lvm", "lvm_thin", volume_group="qubes_dom0", thin_pool="pool00")
    assert isinstance(pool, UnavailablePool) and not pool.usable
    assert pool.xml_attributes() == {"name": "lvm", "driver": "lvm_thin",
                                     "volume_group": "qubes_dom0", "thin_pool": "pool00"}
    with pytest.raises(StoragePoolException, match="not installed"):
        pool.init_volume(None, {"name": "private", "vid": "appvms/x/private"})


def test_options_are_checked_at_setup(tmp_path):
    with pytest.raises(exc.QubesValueError, match="revisions_to_keep"):
        FileReflinkPool(name="p", dir_path=str(tmp_path), revisions_to_keep="x").setup()
    with pytest.raises(exc.QubesValueError, match="setup_check"):
        FileReflinkPool(name="p", dir_path=str(tmp_path), setup_check="maybe").setup()
    with pytest.raises(StoragePoolException, match="absolute"):
        FileReflinkPool(name="p", dir_path="rel").setup()
    pool = FileReflinkPool(name="p", dir_path=str(tmp_path), revisions_to_keep="4")
    assert pool.revisions_to_keep == 4
    with pytest.raises(exc.QubesValueError):
        pool.revisions_to_keep = -1
    assert pool.revisions_to_keep == 4


async def test_file_driver_volume_cycle_without_root(tmp_path):
    """The ``file`` driver works on any filesystem, here the test directory's."""
    pool = FilePool(name="f", dir_path=str(tmp_path / "pool"))
    pool.setup()
    vol = pool.init_volume(None, {"name": "private", "vid": "appvms/a/private", "rw": True,
                                  "size": 8 * MiB, "save_on_stop": True,
                                  "revisions_to_keep": 2})
    await vol.create()
    cow = vol.path_cow
    with open(cow, "wb") as handle:
        handle.write(b"dm exception store")
    await vol.start()
    write(vol.path_dirty, 0, b"hello")
    await vol.stop()
    with open(vol.path_clean, "rb") as handle:
        assert handle.read(5) == b"hello"
    assert len(vol.revisions) == 1
    assert not os.path.exists(vol.path_precache), "no precache without reflinks"
    assert os.path.exists(cow), "the device-mapper file is left alone while the VM lives"
    await vol.remove()
    assert not os.path.exists(cow) and not os.path.exists(os.path.dirname(cow))


async def test_kernel_pool(tmp_path):
    (tmp_path / "6.1.0").mkdir()
    (tmp_path / "6.1.0" / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "6.1.0" / "modules.img").write_bytes(b"m" * 4096)
    pool = LinuxKernelPool(name="linux-kernel", dir_path=str(tmp_path))
    assert pool.kernels() == ["6.1.0"]
    vol = pool.init_volume(None, {"name": "kernel", "vid": "6.1.0"})
    assert await vol.verify() and vol.size == 4096 and not vol.rw
    assert vol.block_device() == str(tmp_path / "6.1.0" / "modules.img")
    missing = pool.init_volume(None, {"name": "kernel", "vid": "5.0"})
    with pytest.raises(StoragePoolException, match="not installed"):
        await missing.start()


def test_make_dirs_reports_only_what_it_created(tmp_path):
    (tmp_path / "old").mkdir()
    created = fileops.make_dirs(tmp_path / "old" / "a" / "b")
    assert created == [tmp_path / "old" / "a", tmp_path / "old" / "a" / "b"]
    assert fileops.make_dirs(tmp_path / "old" / "a" / "b") == []


def test_new_dirs_are_removed_when_the_block_fails_but_never_older_ones(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep").write_text("kept")
    with pytest.raises(RuntimeError), fileops.new_dirs(tmp_path / "old" / "a" / "b"):
        raise RuntimeError("refused")
    assert sorted(os.listdir(tmp_path / "old")) == ["keep"]
    # A created directory that got a file meanwhile is kept, and so are its parents.
    with pytest.raises(RuntimeError), fileops.new_dirs(tmp_path / "new" / "x") as made:
        (made[-1] / "someone's file").write_text("data")
        raise RuntimeError("refused")
    assert (tmp_path / "new" / "x" / "someone's file").read_text() == "data"
    with fileops.new_dirs(tmp_path / "fine" / "y"):
        pass
    assert (tmp_path / "fine" / "y").is_dir()


def test_file_size_possible_asks_the_filesystem(tmp_path):
    assert fileops.file_size_possible(tmp_path, 64 * MiB)
    assert not fileops.file_size_possible(tmp_path, 2**64), "beyond off_t"
    assert os.listdir(tmp_path) == [], "the probe is removed"


@pytest.mark.parametrize("driver, known", [
    ("file-reflink", ["dir_path", "ephemeral_volatile", "revisions_to_keep", "setup_check"]),
    ("file", ["dir_path", "ephemeral_volatile", "revisions_to_keep"]),
    ("linux-kernel", ["dir_path"]),
])
def test_drivers_declare_their_options(driver, known):
    pool = make_pool("p", driver, dir_path="/nowhere", bogus="1", **{"x-y": "2"})
    assert sorted(pool.known_options) == known
    assert pool.unknown_options() == ["bogus", "x-y"]
    with pytest.raises(exc.QubesValueError, match=rf"unknown options bogus, x-y for driver "
                                                  rf"{driver} \(known options: "
                                                  rf"{', '.join(known)}\)"):
        pool.check_options()
    assert make_pool("lvm", "lvm_thin", thin_pool="p").unknown_options() == [], \
        "nothing is known of a driver that is not installed: all its options are kept"


async def test_volume_size_bounds_before_the_driver_runs(tmp_path):
    pool = FilePool(name="f", dir_path=str(tmp_path / "pool"))
    pool.setup()
    vol = pool.init_volume(None, {"name": "private", "vid": "appvms/x/private",
                                  "size": MiB, "save_on_stop": True})
    await vol.create()
    for size in (2**63, 99999999999999999999):
        with pytest.raises(exc.QubesValueError, match="more than the largest possible"):
            await vol.resize(size)
        with pytest.raises(exc.QubesValueError, match="more than the largest possible"):
            await vol.import_data(size)
    assert vol.config["size"] == MiB and os.stat(vol.path_clean).st_size == MiB


def test_kernel_pool_keeps_no_revisions(tmp_path):
    pool = LinuxKernelPool(name="linux-kernel", dir_path=str(tmp_path))
    assert pool.revisions_to_keep == 0
    with pytest.raises(StoragePoolException, match="no revisions"):
        pool.revisions_to_keep = 2
    assert pool.config == {"dir_path": str(tmp_path)}


def test_filesystem_type_reads_non_ascii_and_escaped_mount_points(tmp_path):
    """mountinfo escapes only space, tab, newline and backslash; other bytes are the path's."""
    from qubes_core.storage.reflink import filesystem_type

    fake = tmp_path / "mountinfo"
    fake.write_bytes(
        b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        b"40 22 7:0 / /mnt/caf\xc3\xa9\\040pool rw - xfs /dev/loop0 rw\n"
        b"41 22 7:1 / /mnt/raw\xff rw - btrfs /dev/loop1 rw\n")
    assert filesystem_type("/mnt/café pool/appvms", str(fake)) == "xfs"
    assert filesystem_type(os.fsdecode(b"/mnt/raw\xff/x"), str(fake)) == "btrfs"
    assert filesystem_type("/mnt/café", str(fake)) == "ext4"


def test_storage_does_not_import_the_app():
    """Storage is below the model: the pool handlers of the app live in an extension."""
    import subprocess
    import sys

    code = ("import sys, qubes_core.storage, qubes_core.storage.reflink, qubes_core.storage.file,"
            " qubes_core.storage.kernel, qubes_core.storage.vmstorage;"
            "qubes_core.storage.make_pool('p', 'file-reflink', dir_path='/nonexistent');"
            "print(sorted(m for m in sys.modules if m.startswith('qubes_core.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "qubes_core.storage.reflink" in out
    assert "'qubes_core.app'" not in out and "qubes_core.vm" not in out
