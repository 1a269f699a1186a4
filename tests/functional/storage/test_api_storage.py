"""admin.pool.* and admin.vm.volume.* through the whole call path, on XFS and ext4."""

from __future__ import annotations

import os

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from tests.functional.api.conftest import Harness
from tests.functional.storage.conftest import fs_dir
from tests.functional.storage.extents import shared_bytes
from tests.functional.storage.helpers import MiB, add_small_vms, digest, fill, read_at


@pytest.fixture
async def api(filesystems):
    base = fs_dir(filesystems, "xfs", "api")
    app = Qubes.create_empty_store(base / "qubes.xml", pool_dir=base)
    template, work = add_small_vms(app, 16 * MiB)
    await template.storage.create()
    await work.storage.create()
    app.save()
    yield Harness(app, base)
    app.close()


def on_disk(api) -> Qubes:
    return Qubes(api.app.store.path, lock=False)


async def test_pool_list_info_drivers(api):
    assert await api.call("admin.pool.List") == "linux-kernel\nvarlibqubes\n"
    drivers = (await api.call("admin.pool.ListDrivers")).splitlines()
    assert ("file-reflink dir_path ephemeral_volatile revisions_to_keep setup_check"
            in drivers)
    assert any(line.startswith("file ") for line in drivers)
    info = dict(line.split("=", 1) for line in
                (await api.call("admin.pool.Info", arg="varlibqubes")).splitlines())
    assert info["driver"] == "file-reflink" and info["name"] == "varlibqubes"
    assert int(info["size"]) > int(info["usage"]) > 0
    kernels = dict(line.split("=", 1) for line in
                   (await api.call("admin.pool.Info", arg="linux-kernel")).splitlines())
    assert kernels["driver"] == "linux-kernel"
    assert kernels["dir_path"] == str(api.app.base_dir / "vm-kernels")


async def test_pool_add_checks_the_filesystem_and_remove(api, filesystems):
    ext4 = fs_dir(filesystems, "ext4", "apipool")
    with pytest.raises(exc.StoragePoolException, match="setup_check=no"):
        await api.call("admin.pool.Add", arg="file-reflink",
                       payload=f"name=slow\ndir_path={ext4}\n")
    assert "slow" not in api.app.pools and "slow" not in on_disk(api).pools
    await api.call("admin.pool.Add", arg="file-reflink",
                   payload=f"name=slow\ndir_path={ext4}\nsetup_check=no\n")
    assert on_disk(api).pools["slow"].config["setup_check"] == "no"
    await api.call("admin.pool.Set.revisions_to_keep", arg="slow", payload="3")
    assert on_disk(api).pools["slow"].config["revisions_to_keep"] == "3"
    with pytest.raises(exc.QubesPoolInUseError):
        await api.call("admin.pool.Remove", arg="varlibqubes")
    await api.call("admin.pool.Remove", arg="slow")
    assert "slow" not in on_disk(api).pools


@pytest.mark.parametrize("driver, payload, message", [
    ("nosuch", "name=x\ndir_path=/tmp/x\n", "no such storage driver"),
    ("file-reflink", "dir_path=/tmp/x\n", "name= is missing"),
    ("file-reflink", "name=x\nname=y\n", "given twice"),
    ("file-reflink", "name=x\nBad Key=1\n", "expected key=value"),
    ("file-reflink", "name=x\ndir_path=/tmp/\x01x\n", "control character"),
    ("file-reflink", "name=../x\ndir_path=/tmp/x\n", "invalid pool name"),
    # A name the wire cannot carry (ASCII only, 64 characters at most) never gets in.
    ("file-reflink", "name=p\u00f6\u00f6l\ndir_path=/tmp/x\n", "invalid pool name"),
    ("file-reflink", "name=\u0661\u0662\ndir_path=/tmp/x\n", "invalid pool name"),
    ("file-reflink", "name=" + "p" * 3000 + "\ndir_path=/tmp/x\n", "invalid pool name"),
    ("file-reflink", "name=" + "p" * 65 + "\ndir_path=/tmp/x\n", "invalid pool name"),
    ("file-reflink", "name=-x\ndir_path=/tmp/x\n", "invalid pool name"),
    ("file-reflink", "name=x\ndir_path=relative\n", "dir_path"),
])
async def test_pool_add_refuses_bad_payloads(api, driver, payload, message):
    before = api.app.store.path.read_bytes()
    with pytest.raises(exc.QubesException, match=message):
        await api.call("admin.pool.Add", arg=driver, payload=payload)
    assert sorted(api.app.pools) == ["linux-kernel", "varlibqubes"]
    assert api.app.store.path.read_bytes() == before


async def test_volume_list_info_snapshots_revert(api):
    assert (await api.call("admin.vm.volume.List", "work")).split() == [
        "private", "root", "volatile"]
    info = dict(line.split("=", 1) for line in
                (await api.call("admin.vm.volume.Info", "work", "root")).splitlines())
    assert info["snap_on_start"] == "True" and info["source"] == "vm-templates/tpl/root"
    assert info["pool"] == "varlibqubes" and info["size"] == str(16 * MiB)

    private = api.app.domains["work"].volumes["private"]
    for generation in range(3):
        await private.start()
        fill(private.path_dirty, f"gen {generation} ".encode(), 1 * MiB)
        await private.stop()
    await api.call("admin.vm.volume.Set.revisions_to_keep", "work", "private", "2")
    assert on_disk(api).domains["work"].volume_config["private"]["revisions_to_keep"] == 2
    snapshots = (await api.call("admin.vm.volume.ListSnapshots", "work", "private")).split()
    assert snapshots == list(private.revisions) and len(snapshots) == 1
    old = private.path_revision(snapshots[0], private.revisions[snapshots[0]])
    expected = digest(old)
    await api.call("admin.vm.volume.Revert", "work", "private", snapshots[0])
    assert digest(private.path_clean) == expected
    with pytest.raises(exc.QubesValueError, match="no revision '77'"):
        await api.call("admin.vm.volume.Revert", "work", "private", "77")
    with pytest.raises(exc.QubesValueError, match="invalid revision"):
        await api.call("admin.vm.volume.Revert", "work", "private", "../../etc")


async def test_volume_resize_and_rw(api):
    await api.call("admin.vm.volume.Resize", "work", "private", str(32 * MiB))
    private = api.app.domains["work"].volumes["private"]
    assert os.stat(private.path_clean).st_size == 32 * MiB
    assert on_disk(api).domains["work"].volume_config["private"]["size"] == 32 * MiB
    with pytest.raises(exc.StoragePoolException, match="shrink"):
        await api.call("admin.vm.volume.Resize", "work", "private", str(8 * MiB))
    with pytest.raises(exc.QubesValueError, match="non-negative integer"):
        await api.call("admin.vm.volume.Resize", "work", "private", "-5")
    await api.call("admin.vm.volume.Set.rw", "work", "private", "False")
    assert on_disk(api).domains["work"].volume_config["private"]["rw"] is False
    with pytest.raises(exc.QubesValueError, match="rw"):
        await api.call("admin.vm.volume.Set.rw", "work", "private", "perhaps")
    with pytest.raises(exc.QubesValueError, match="no volume 'swap'"):
        await api.call("admin.vm.volume.Info", "work", "swap")


async def test_clone_from_to_shares_extents(api):
    work = api.app.domains["work"]
    await work.volumes["private"].start()
    data = fill(work.volumes["private"].path_dirty, b"clone source ", 4 * MiB)
    await work.volumes["private"].stop()
    copy = api.app.clone_vm(work, "copy")
    await copy.storage.create()
    token = await api.call("admin.vm.volume.CloneFrom", "work", "private")
    await api.call("admin.vm.volume.CloneTo", "copy", "private", token)
    target = copy.volumes["private"].path_clean
    assert read_at(target, 0, len(data)) == data
    assert shared_bytes(target) >= len(data)
    with pytest.raises(exc.QubesValueError, match="already used"):
        await api.call("admin.vm.volume.CloneTo", "copy", "private", token)


async def test_import_replaces_contents(api):
    image = b"imported image " * 2000
    await api.call("admin.vm.volume.Import", "work", "private", image)
    private = api.app.domains["work"].volumes["private"]
    assert read_at(private.path_clean, 0, len(image)) == image
    assert not os.path.exists(private.path_import)

    path = await api.call("internal.vm.volume.ImportBegin", "work", "private",
                          str(16 * MiB), kind="internal")
    assert path == private.path_import
    fill(path, b"big import ", 2 * MiB)
    await api.call("internal.vm.volume.ImportEnd", "work", "private", "ok", kind="internal")
    assert read_at(private.path_clean, 0, 11) == b"big import "


async def test_volume_methods_refuse_a_running_vm(api):
    """The VM really runs, in libvirt's test driver, on its volumes."""
    from qubes_core.backend import make_runtime

    work = api.app.domains["work"]
    runtime = make_runtime("test")
    api.app.runtime = runtime
    try:
        await work.start()
        try:
            assert os.path.exists(work.volumes["private"].path_dirty)
            before = digest(work.volumes["private"].path_clean)
            with pytest.raises(exc.QubesVMNotHaltedError):
                await api.call("admin.vm.volume.Import", "work", "private", b"x")
            with pytest.raises(exc.QubesVMNotHaltedError):
                await api.call("admin.vm.volume.Set.rw", "work", "private", "False")
            with pytest.raises(exc.QubesVMNotHaltedError):
                await api.call("admin.vm.volume.Revert", "work", "private", "")
            assert digest(work.volumes["private"].path_clean) == before
        finally:
            await work.kill()
    finally:
        runtime.close()
