"""Real filesystems for the storage tests: sparse images, mkfs, loop mounts.

The filesystems are made once per session (they are the slow part) and every
test works in its own directory on them. They are always unmounted and their
loop devices detached, also when a test fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_core.storage.file import FilePool
from qubes_core.storage.reflink import FileReflinkPool
from tests.requirements import require, require_root, require_tool

MiB = 1024**2
MKFS = {
    "xfs": (["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], 512 * MiB),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], 512 * MiB),
    "ext4": (["mkfs.ext4", "-q", "-F"], 256 * MiB),
}
REFLINK_FILESYSTEMS = ("xfs", "btrfs")
_counter = itertools.count()


def require_loop_mounts(fstype: str) -> None:
    require_root()
    require_tool(MKFS[fstype][0][0], "losetup", "mount", "umount")
    require(os.path.exists("/dev/loop-control"), "needs loop devices (/dev/loop-control)")


@contextlib.contextmanager
def loop_filesystem(fstype: str, workdir: Path, size: int | None = None) -> Iterator[Path]:
    """A fresh ``fstype`` filesystem on a sparse image, loop-mounted; torn down after."""
    mkfs, default_size = MKFS[fstype]
    image = workdir / f"{fstype}-{next(_counter)}.img"
    mount_point = workdir / f"{fstype}-{next(_counter)}.mnt"
    mount_point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(size or default_size)
    device = None
    mounted = False
    try:
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", device, str(mount_point)], check=True, capture_output=True)
        mounted = True
        yield mount_point
    finally:
        if mounted:
            result = subprocess.run(["umount", str(mount_point)], capture_output=True)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        with contextlib.suppress(OSError):
            mount_point.rmdir()
        image.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def filesystems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Mounted filesystems by type, made on first use and kept for the session."""
    workdir = tmp_path_factory.mktemp("loopfs")
    with contextlib.ExitStack() as stack:
        class Mounts(dict):
            def __missing__(self, fstype: str) -> Path:
                self[fstype] = stack.enter_context(loop_filesystem(fstype, workdir))
                return self[fstype]

        yield Mounts()


def fs_dir(filesystems: dict[str, Path], fstype: str, name: str) -> Path:
    require_loop_mounts(fstype)
    path = filesystems[fstype] / f"{name}-{next(_counter)}"
    path.mkdir()
    return path


def new_pool(filesystems: dict[str, Path], fstype: str, cls: type = FileReflinkPool,
             **options: str) -> FileReflinkPool:
    """A set-up pool in a new directory on ``fstype`` (setup_check=no on ext4)."""
    options.setdefault("dir_path", str(fs_dir(filesystems, fstype, "pool")))
    if fstype not in REFLINK_FILESYSTEMS and cls is FileReflinkPool:
        options.setdefault("setup_check", "no")
    made = cls(name=options.pop("name", f"pool{next(_counter)}"), **options)
    made.setup()
    return made


@pytest.fixture(params=(*REFLINK_FILESYSTEMS, "ext4"))
def pool(request: pytest.FixtureRequest, filesystems: dict[str, Path]) -> FileReflinkPool:
    """A file-reflink pool on XFS, btrfs (reflinks) and ext4 (sparse-copy fallback)."""
    made = new_pool(filesystems, request.param)
    made.fstype = request.param  # type: ignore[attr-defined]
    return made


@pytest.fixture(params=REFLINK_FILESYSTEMS)
def reflink_pool(request: pytest.FixtureRequest, filesystems: dict[str, Path]
                 ) -> FileReflinkPool:
    """A file-reflink pool on XFS and on btrfs."""
    made = new_pool(filesystems, request.param)
    made.fstype = request.param  # type: ignore[attr-defined]
    return made


@pytest.fixture
def file_pool(filesystems: dict[str, Path]) -> FilePool:
    """A ``file`` pool on XFS: a reflink-capable filesystem it must not reflink on."""
    return new_pool(filesystems, "xfs", FilePool)  # type: ignore[return-value]
