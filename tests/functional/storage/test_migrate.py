"""``qubes-pool-migrate``: file pools to file-reflink, on real filesystems."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.storage.migrate import migrate
from tests.functional.storage.conftest import fs_dir
from tests.functional.storage.extents import shared_bytes
from tests.functional.storage.helpers import MiB, add_small_vms, fill, write_at

MIGRATE = [sys.executable, "-m", "qubes_core.storage.migrate"]


def file_store(base: Path) -> list[str]:
    """A store with a ``file`` pool, a template and an AppVM, plus old ``-cow.img`` files."""
    import asyncio

    app = Qubes.create_empty_store(base / "qubes.xml", pool_dir=base, pool_driver="file")
    try:
        template, work = add_small_vms(app, 32 * MiB)

        async def create() -> None:
            await template.storage.create()
            await work.storage.create()
            await template.storage.start()
            fill(template.volumes["root"].path_dirty, b"root data ", 4 * MiB)
            await template.storage.stop()

        asyncio.run(create())
        app.save()
    finally:
        app.close()
    cows = [str(base / "vm-templates/tpl/root-cow.img"), str(base / "appvms/work/private-cow.img")]
    for cow in cows:
        with open(cow, "wb") as handle:
            handle.truncate(32 * MiB)
        write_at(cow, 0, b"old device-mapper exception store" * 1000)
    return cows


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MIGRATE, *args], capture_output=True, text=True, timeout=60)


def test_migrates_file_pool_on_xfs(filesystems):
    base = fs_dir(filesystems, "xfs", "migrate")
    cows = file_store(base)
    before = (base / "qubes.xml").read_text()
    assert 'driver="file"' in before

    dry = run("--base-dir", str(base), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and all(os.path.exists(c) for c in cows)
    assert (base / "qubes.xml").read_text() == before

    result = run("--base-dir", str(base))
    assert result.returncode == 0, result.stderr
    after = (base / "qubes.xml").read_text()
    assert 'driver="file-reflink"' in after and 'driver="file"' not in after
    assert "setup_check" not in after
    backups = list(base.glob("qubes.xml.pre-migration-*"))
    assert len(backups) == 1 and backups[0].read_text() == before
    assert f"backup of qubes.xml: {backups[0]}" in result.stdout
    assert "pool varlibqubes: driver file -> file-reflink" in result.stdout
    for cow in cows:
        assert not os.path.exists(cow) and f"removed {cow}" in result.stdout

    again = run("--base-dir", str(base))
    assert again.returncode == 0 and again.stdout.strip() == "nothing to migrate"

    # The migrated pool works by reflinks.
    import asyncio

    with Qubes(base / "qubes.xml") as app:
        work = app.domains["work"]

        async def start_stop() -> None:
            await work.storage.start()
            assert shared_bytes(work.volumes["root"].path_dirty) >= 4 * MiB
            await work.storage.stop()

        asyncio.run(start_stop())


def test_refuses_without_reflink_and_changes_nothing(filesystems):
    base = fs_dir(filesystems, "ext4", "migrate")
    cows = file_store(base)
    before = (base / "qubes.xml").read_text()
    result = run("--base-dir", str(base))
    assert result.returncode == 1
    assert "cannot reflink" in result.stderr and "--setup-check no" in result.stderr
    assert (base / "qubes.xml").read_text() == before
    assert not list(base.glob("qubes.xml.pre-migration-*"))
    assert all(os.path.exists(c) for c in cows)

    accepted = run("--base-dir", str(base), "--setup-check", "no")
    assert accepted.returncode == 0, accepted.stderr
    after = (base / "qubes.xml").read_text()
    assert 'driver="file-reflink"' in after and 'setup_check="no"' in after


def test_refuses_while_an_image_is_in_use(filesystems):
    import asyncio

    base = fs_dir(filesystems, "xfs", "migrate")
    file_store(base)
    with Qubes(base / "qubes.xml") as app:
        asyncio.run(app.domains["work"].storage.start())
        app.save()
    before = (base / "qubes.xml").read_text()
    result = run("--base-dir", str(base))
    assert result.returncode == 1
    assert "appvms/work/private-dirty.img" in result.stderr
    assert (base / "qubes.xml").read_text() == before


def test_refuses_while_qubesd_holds_the_store(filesystems):
    base = fs_dir(filesystems, "xfs", "migrate")
    file_store(base)
    with Qubes(base / "qubes.xml"):
        result = run("--base-dir", str(base))
    assert result.returncode == 1 and "locked by another writer" in result.stderr


def test_refuses_while_a_vm_of_the_pool_runs(filesystems):
    """A VM really running in libvirt's test driver blocks the migration."""
    import asyncio

    from qubes_core.backend import make_runtime

    base = fs_dir(filesystems, "xfs", "migrate")
    file_store(base)

    async def scenario() -> None:
        runtime = make_runtime("test")
        app = Qubes(base / "qubes.xml", runtime=runtime)
        try:
            work = app.domains["work"]
            await work.start()
            try:
                assert work.get_power_state() == "Running"
                with pytest.raises(exc.QubesVMNotHaltedError, match="running: work"):
                    migrate(app)
                assert app.pools["varlibqubes"].driver == "file"
            finally:
                await work.kill()
        finally:
            app.close()
            runtime.close()

    asyncio.run(scenario())
