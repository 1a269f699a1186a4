"""Errors of the filesystem reach the Admin API caller as storage errors, and change nothing.

The calls go through the server's whole call path (framing, dispatch, reply
encoding) on real filesystems: ext4 holds files of at most 16 TiB, XFS and
btrfs up to the largest offset a file can have.
"""

from __future__ import annotations

import logging
import os

import pytest

from qubes_core import exc, protocol
from qubes_core.app import Qubes
from qubes_core.storage import MAX_VOLUME_SIZE
from tests.functional.api.conftest import Harness
from tests.functional.storage.conftest import fs_dir
from tests.functional.storage.helpers import MiB, add_small_vms, digest, fill

TiB = 1024**4


def store_on(filesystems, fstype: str) -> Harness:
    base = fs_dir(filesystems, fstype, "errors")
    app = Qubes.create_empty_store(base / "qubes.xml", pool_dir=base, setup_check="auto")
    add_small_vms(app, 16 * MiB)
    return Harness(app, base)


@pytest.fixture(params=["ext4", "xfs"])
async def api(request, filesystems):
    harness = store_on(filesystems, request.param)
    harness.fstype = request.param
    app = harness.app
    await app.domains["tpl"].storage.create()
    await app.domains["work"].storage.create()
    private = app.domains["work"].volumes["private"]
    await private.start()
    fill(private.path_dirty, b"private data ", 2 * MiB)
    await private.stop()
    app.save()
    yield harness
    app.close()


def snapshot_of(api) -> tuple[bytes, dict, list[str], str]:
    """What must not change: qubes.xml, the volume's config, its files and contents."""
    private = api.app.domains["work"].volumes["private"]
    directory = os.path.dirname(private.path_clean)
    return (api.app.store.path.read_bytes(), dict(private.config),
            sorted(os.listdir(directory)), digest(private.path_clean))


async def resize_refused(api, size: int | str, match: str) -> None:
    """The call gets an exception reply (not a closed connection) and changes nothing."""
    before = snapshot_of(api)
    reply = await api.raw("admin.vm.volume.Resize", "work", "private", str(size))
    assert reply, "qubesd closed the connection without a reply"
    assert reply.startswith(protocol.EXCEPTION), reply[:80]
    with pytest.raises(exc.QubesException, match=match):
        await api.call("admin.vm.volume.Resize", "work", "private", str(size))
    assert snapshot_of(api) == before


@pytest.mark.parametrize("size", [99999999999999999999, 2**64, MAX_VOLUME_SIZE + 1])
async def test_resize_beyond_any_file_size_is_refused_by_name(api, size):
    await resize_refused(api, size, rf"volume appvms/work/private: size {size} is more than "
                                    rf"the largest possible \({MAX_VOLUME_SIZE} bytes\)")


async def test_resize_beyond_the_filesystems_file_size_is_refused(api):
    """ext4 cannot hold a file of 16 TiB (4 TiB with the 1 KiB blocks of a small one); XFS
    can."""
    if api.fstype != "ext4":
        await api.call("admin.vm.volume.Resize", "work", "private", str(16 * TiB))
        assert api.app.domains["work"].volumes["private"].size == 16 * TiB
        return
    for size in (MAX_VOLUME_SIZE, 16 * TiB):
        await resize_refused(api, size, rf"cannot resize volume appvms/work/private: {size} "
                                        r"bytes is more than the ext4 filesystem of pool "
                                        r"varlibqubes \(.*\) can hold in one file")
    await api.call("admin.vm.volume.Resize", "work", "private", str(1024 * MiB))
    private = api.app.domains["work"].volumes["private"]
    assert os.stat(private.path_clean).st_size == 1024 * MiB == private.config["size"]


async def test_resize_of_a_running_vms_volume_is_bounded_too(api):
    """The dirty image of a running VM grows in place: the same check comes first."""
    private = api.app.domains["work"].volumes["private"]
    await private.start()
    try:
        dirty = os.stat(private.path_dirty).st_size
        before = dict(private.config)
        size = MAX_VOLUME_SIZE if api.fstype == "ext4" else MAX_VOLUME_SIZE + 1
        with pytest.raises(exc.QubesException, match="appvms/work/private"):
            await api.call("admin.vm.volume.Resize", "work", "private", str(size))
        assert private.config == before
        assert os.stat(private.path_dirty).st_size == dirty
    finally:
        await private.stop()


async def test_snapshot_volume_size_is_bounded_before_it_is_recorded(api):
    """An AppVM's root has no file of its own while halted: only the model would change."""
    root = api.app.domains["work"].volumes["root"]
    before = dict(root.config)
    with pytest.raises(exc.QubesException, match="appvms/work/root"):
        await api.call("admin.vm.volume.Resize", "work", "root", str(MAX_VOLUME_SIZE + 1))
    assert root.config == before


async def test_os_error_of_a_volume_operation_is_a_storage_error(api, caplog):
    """Any OSError of the blocking work becomes a StoragePoolException that names the
    volume and the operation: here the VM's directory was replaced by a file."""
    private = api.app.domains["work"].volumes["private"]
    directory = os.path.dirname(private.path_clean)
    os.rename(directory, directory + ".moved")
    try:
        with open(directory, "w", encoding="utf-8") as handle:  # a file where the dir was
            handle.write("not a directory\n")
        before = dict(private.config)
        refused = pytest.raises(exc.StoragePoolException,
                                match=r"volume appvms/work/private: import failed: "
                                      r"\[Errno 20\] Not a directory")
        with caplog.at_level(logging.ERROR, logger="qubes.storage"), refused:
            await api.call("admin.vm.volume.Import", "work", "private", b"x" * 512)
        assert private.config == before
        assert "import failed" in caplog.text
        with pytest.raises(exc.StoragePoolException,
                           match=r"volume appvms/work/private: info failed: .*Not a directory"):
            await api.call("admin.vm.volume.Info", "work", "private")
    finally:
        os.unlink(directory)
        os.rename(directory + ".moved", directory)
