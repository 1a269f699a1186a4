"""VM storage as a whole and pools in the app, on real filesystems."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.storage import StoragePoolException
from tests.functional.storage.conftest import fs_dir
from tests.functional.storage.extents import shared_bytes
from tests.functional.storage.helpers import MiB, fill, read_at


@pytest.fixture(params=["xfs", "btrfs"])
def fs_app(request, filesystems):
    """A store whose default pool is on XFS or btrfs, with a template and an AppVM."""
    base = fs_dir(filesystems, request.param, "store")
    app = Qubes.create_empty_store(base / "qubes.xml", pool_dir=base)
    template = app.add_new_vm("TemplateVM", name="tpl", label="black")
    app.default_template = template
    app.add_new_vm("AppVM", name="work", label="blue", template_for_dispvms=True)
    for vm in (template, app.domains["work"]):
        for name in ("root", "private", "volatile"):
            vm.volume_config[name]["size"] = 64 * MiB
    yield app
    app.close()


def test_add_pool_checks_reflink_on_the_pools_own_filesystem(app, filesystems):
    ext4 = fs_dir(filesystems, "ext4", "pool")
    with pytest.raises(StoragePoolException, match="setup_check=no") as info:
        app.add_pool("slow", "file-reflink", dir_path=str(ext4))
    assert "ext4" in str(info.value)
    assert "slow" not in app.pools
    pool = app.add_pool("slow", "file-reflink", dir_path=str(ext4), setup_check="no")
    assert app.pools["slow"] is pool and pool.config["setup_check"] == "no"

    xfs = fs_dir(filesystems, "xfs", "pool")
    fast = app.add_pool("fast", "file-reflink", dir_path=str(xfs / "new" / "dir"))
    assert "setup_check" not in fast.config and os.path.isdir(xfs / "new" / "dir")
    assert [n for n in os.listdir(xfs / "new" / "dir")] == [], "the probe files are removed"


def test_add_pool_refuses_bad_options_and_changes_nothing(app, filesystems):
    xfs = fs_dir(filesystems, "xfs", "pool")
    before = dict(app.pools)
    with pytest.raises(exc.QubesException, match="dir_path"):
        app.add_pool("nodir", "file-reflink")
    with pytest.raises(exc.QubesException, match="dir_path"):
        app.add_pool("relative", "file-reflink", dir_path="relative/path")
    with pytest.raises(exc.QubesValueError, match="revisions_to_keep"):
        app.add_pool("badrev", "file-reflink", dir_path=str(xfs), revisions_to_keep="-1")
    with pytest.raises(exc.QubesValueError, match="setup_check"):
        app.add_pool("badcheck", "file-reflink", dir_path=str(xfs), setup_check="maybe")
    assert app.pools == before


def test_new_store_with_explicit_setup_check_refuses_ext4(filesystems):
    base = fs_dir(filesystems, "ext4", "store")
    with pytest.raises(StoragePoolException, match="setup_check=no"):
        Qubes.create_empty_store(base / "qubes.xml", pool_dir=base, setup_check="yes")
    assert not (base / "qubes.xml").exists()


async def test_appvm_and_dispvm_lifecycle(fs_app):
    app = fs_app
    template, work = app.domains["tpl"], app.domains["work"]
    await template.storage.create()
    await work.storage.create()
    pool_dir = app.pools["varlibqubes"].dir_path
    assert sorted(os.listdir(os.path.join(pool_dir, "vm-templates/tpl"))) == [
        "private.img", "root.img"]
    assert sorted(os.listdir(os.path.join(pool_dir, "appvms/work"))) == ["private.img"]

    await template.storage.start()
    data = fill(template.volumes["root"].path_dirty, b"template root ", 4 * MiB)
    await template.storage.stop()

    await work.storage.start()
    root = work.volumes["root"]
    assert os.stat(root.path_clean).st_ino == os.stat(template.volumes["root"].path_clean).st_ino
    assert read_at(root.path_dirty, 0, len(data)) == data
    assert shared_bytes(root.path_dirty) >= len(data)
    assert set(work.storage.block_devices()) == {"root", "private", "volatile"}
    fill(work.volumes["private"].path_dirty, b"user data ", 2 * MiB)
    assert work.storage.outdated_volumes() == []

    disp = app.add_new_vm("DispVM", template=work, label="red")
    await disp.storage.create()
    await disp.storage.start()
    assert disp.volumes["root"].source is template.volumes["root"]
    assert disp.volumes["private"].source is work.volumes["private"]
    assert read_at(disp.volumes["root"].path_dirty, 0, len(data)) == data

    await template.storage.start()
    await template.storage.stop()
    assert work.storage.outdated_volumes() == ["root"]

    await asyncio.gather(work.storage.stop(), disp.storage.stop())
    assert read_at(work.volumes["private"].path_clean, 0, 10) == b"user data "
    await disp.storage.remove()
    assert not os.path.exists(os.path.join(pool_dir, "appvms", disp.name))
    assert os.path.exists(work.volumes["private"].path_clean)


async def test_start_failure_undoes_the_started_volumes(fs_app):
    work = fs_app.domains["work"]
    await fs_app.domains["tpl"].storage.create()
    await work.storage.create()
    os.mkdir(work.volumes["volatile"].path_dirty)  # the volatile image cannot be made
    with pytest.raises(StoragePoolException, match="volatile"):
        await work.storage.start()
    directory = os.path.dirname(work.volumes["private"].path_clean)
    assert sorted(os.listdir(directory)) == ["private.img", "volatile-dirty.img"]
    assert work.volumes["private"].revisions == {}, "an aborted start commits nothing"


async def test_verify_names_the_missing_image(fs_app):
    work = fs_app.domains["work"]
    await work.storage.create()
    with pytest.raises(StoragePoolException, match="vm-templates/tpl/root"):
        await work.storage.start()
    assert not os.path.exists(work.volumes["private"].path_dirty)


async def test_clone_copies_persistent_volumes(fs_app, caplog):
    app = fs_app
    work = app.domains["work"]
    await app.domains["tpl"].storage.create()
    await work.storage.create()
    await work.storage.start()
    data = fill(work.volumes["private"].path_dirty, b"clone me ", 4 * MiB)
    await work.storage.stop()
    copy = app.clone_vm(work, "work-copy")
    await copy.storage.create()
    with caplog.at_level(logging.INFO, logger="qubes.storage.reflink"):
        await copy.storage.clone(work)
    private = copy.volumes["private"].path_clean
    assert read_at(private, 0, len(data)) == data
    assert shared_bytes(private) >= len(data)
    assert any("Copied file by reflink" in r.getMessage() for r in caplog.records)


async def test_volume_config_changes_are_persisted(fs_app):
    app = fs_app
    work = app.domains["work"]
    await work.storage.create()
    await work.volumes["private"].resize(128 * MiB)
    work.volumes["private"].revisions_to_keep = 3
    app.save()
    path = app.store.path
    app.close()
    again = Qubes(path)
    try:
        config = again.domains["work"].volume_config["private"]
        assert config["size"] == 128 * MiB and config["revisions_to_keep"] == 3
        assert again.domains["work"].volumes["private"].size == 128 * MiB
    finally:
        again.close()


async def test_pool_in_use_cannot_be_removed(fs_app, filesystems):
    with pytest.raises(exc.QubesPoolInUseError, match="tpl"):
        fs_app.remove_pool("varlibqubes")
    spare = fs_app.add_pool("spare", "file-reflink",
                            dir_path=str(fs_dir(filesystems, "xfs", "spare")))
    assert fs_app.remove_pool("spare") is spare


def test_volumes_follow_the_volume_config(fs_app, filesystems):
    work = fs_app.domains["work"]
    private = work.volumes["private"]
    assert work.volumes["private"] is private, "one volume object (one lock) per volume"
    other = fs_app.add_pool("other", "file-reflink",
                            dir_path=str(fs_dir(filesystems, "btrfs", "other")))
    work.volume_config["private"]["pool"] = "other"
    moved = work.volumes["private"]
    assert moved is not private and moved.pool is other
    assert "kernel" not in work.volumes, "no kernel volume when the VM boots its own"
    work.volume_config["private"]["pool"] = "nonexistent"
    with pytest.raises(StoragePoolException, match="no such pool 'nonexistent'"):
        work.storage.volumes  # noqa: B018


async def test_aborted_start_keeps_the_changes_of_an_unclean_stop(fs_app):
    work = fs_app.domains["work"]
    await fs_app.domains["tpl"].storage.create()
    await work.storage.create()
    await work.storage.start()
    data = fill(work.volumes["private"].path_dirty, b"unsaved ", 1 * MiB)
    # The VM died without a clean stop; the next start fails on another volume.
    os.unlink(work.volumes["volatile"].path_dirty)
    os.mkdir(work.volumes["volatile"].path_dirty)
    with pytest.raises(StoragePoolException, match="volatile"):
        await work.storage.start()
    assert read_at(work.volumes["private"].path_dirty, 0, len(data)) == data
