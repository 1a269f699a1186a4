"""admin.vm.volume.CloneTo copies outside the server's write lock.

The copy is made slow by its size: the source volume holds 512 MiB of data on a
tmpfs pool (no reflink there, so every byte is copied). While it runs, another
writer's call must complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from qubes_core.app import Qubes
from tests.functional.api.conftest import Harness
from tests.requirements import require_root, require_tool
from tests.support import wait_until_async

MiB = 1024**2
DATA = 512 * MiB
BLOCK = 4 * MiB


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A tmpfs mounted for the test: a filesystem without reflink, in memory."""
    require_root()
    require_tool("mount", "umount")
    mount_point = tmp_path / "ram"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={2 * DATA + 64 * MiB}", "tmpfs",
                    str(mount_point)], check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_with_data(path: str, size: int) -> None:
    """``size`` bytes of non-zero data (all of it is copied, none is a hole)."""
    block = bytes(range(1, 256)) * (BLOCK // 255) + b"\x01" * (BLOCK % 255)
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, BLOCK):
            os.pwrite(fd, block, offset)
    finally:
        os.close(fd)


def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


async def wait_for_file(directory: Path, pattern: str, task: asyncio.Task) -> None:
    await wait_until_async(lambda: any(directory.glob(pattern)) or task.done(),
                           what=f"{pattern} in {directory}")


async def test_feature_set_completes_during_a_slow_clone(tmp_path: Path, tmpfs: Path) -> None:
    app = Qubes.create_empty_store(tmp_path / "qubes.xml", setup_check="auto")
    api = Harness(app, tmp_path)
    try:
        await api.call("admin.pool.Add", "dom0", "file-reflink",
                       f"name=ram\ndir_path={tmpfs}\nsetup_check=no\n")
        for name in ("src", "dst", "other"):
            await api.call("admin.vm.CreateInPool.StandaloneVM", "dom0", "",
                           f"name={name} label=red pool=ram")
        source = app.domains["src"].volumes["private"].export_path()
        await asyncio.to_thread(fill_with_data, source, DATA)
        token = await api.call("admin.vm.volume.CloneFrom", "src", "private")
        clone = asyncio.create_task(api.call("admin.vm.volume.CloneTo", "dst", "private", token))
        await wait_for_file(tmpfs / "appvms" / "dst", "private-import.img~*", clone)
        assert not clone.done(), "the copy was over before it could be observed"
        await api.call("admin.vm.feature.Set", "other", "written-meanwhile", "yes")
        assert not clone.done(), "feature.Set waited for the whole copy"
        assert await asyncio.wait_for(clone, 120) == ""
        copy = app.domains["dst"].volumes["private"].export_path()
        for offset in (0, DATA // 2 + 12345, DATA - BLOCK):
            assert read_at(copy, offset, 4096) == read_at(source, offset, 4096)
        reloaded = Qubes(tmp_path / "qubes.xml", lock=False)
        assert reloaded.domains["other"].features["written-meanwhile"] == "yes"
        reloaded.close()
    finally:
        with contextlib.suppress(Exception):
            await api.server.commits.drain()
        app.close()
