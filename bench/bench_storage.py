"""Storage: start+stop of an AppVM's volumes on XFS and btrfs, snapshot cost vs data size.

For each filesystem (a sparse image, loop-mounted, removed afterwards):

- start+stop of an AppVM's volumes (root: snapshot of a template root; private:
  10 GiB sparse holding 1 GiB; volatile: 10 GiB sparse) with the file-reflink
  driver, against (a) a ``FICLONE`` of each of the same two images, made in this
  process and measured in the same run (the floor: a start must clone each once;
  no process start-up flatters the ratio), and (b) the same
  start+stop with sparse copies (the ``file`` driver, the fallback). Two cases:
  *back to back* (stop right after start, both in one btrfs transaction, the
  worst case) and *a commit apart* (the filesystem commits between start and
  stop, as it does every 30 s while a VM runs: the usual case). The floor
  makes nothing durable; a crash-safe commit must sync twice (data before the
  rename, then the rename), so the floor plus those two syncs is shown too;
- the cost of one snapshot (a snap_on_start volume's start) as the source holds
  1, 4 and 8 GiB of data, written sequentially (contiguous, as a freshly
  installed image) and in 4 MiB pieces with holes (fragmented, as an image a
  VM has written to for a long time). FICLONE's cost follows the number of
  extents, not of bytes: flat for contiguous data, growing for fragmented.

Needs root, losetup and mkfs.xfs/mkfs.btrfs; otherwise it says so and skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Report, median_time
from qubes_core.storage import fileops
from qubes_core.storage.file import FilePool
from qubes_core.storage.reflink import FileReflinkPool

GiB = 1024**3
MiB = 1024**2
CHUNK = 4 * MiB  # data written in 4 MiB pieces with 4 MiB holes between them
MKFS = {"xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}
FS_SIZE = 40 * GiB  # sparse: only what is written takes space on the host
REPEAT = 7
CYCLE_REPEAT = 15  # start+stop cycles: small and noisy, so more of them
FALLBACK_REPEAT = 3


@contextlib.contextmanager
def loop_mount(fstype: str, workdir: Path) -> Iterator[Path]:
    image, mount_point = workdir / f"{fstype}.img", workdir / f"{fstype}.mnt"
    mount_point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(FS_SIZE)
    device = None
    try:
        subprocess.run([*MKFS[fstype], str(image)], check=True, capture_output=True)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", device, str(mount_point)], check=True, capture_output=True)
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        image.unlink(missing_ok=True)


def write_data(path: str, start: int, amount: int, *, holes: bool = True) -> int:
    """Write ``amount`` bytes of data from ``start``, in 4 MiB pieces with 4 MiB holes
    between them (``holes``) or sequentially; return where the next write goes."""
    piece = os.urandom(CHUNK)
    fd = os.open(path, os.O_WRONLY)
    try:
        offset, written = start, 0
        while written < amount:
            os.pwrite(fd, piece, offset)
            written += CHUNK
            offset += 2 * CHUNK if holes else CHUNK
        os.fsync(fd)
    finally:
        os.close(fd)
    return offset


_FIEMAP = 0xC020660B
_FIEMAP_HEADER = struct.Struct("=QQLLLL")


def extent_count(path: str) -> int:
    """Number of extents of ``path`` (FIEMAP with no room for extents returns the count)."""
    request = bytearray(_FIEMAP_HEADER.size)
    _FIEMAP_HEADER.pack_into(request, 0, 0, 2**64 - 1, 1, 0, 0, 0)  # FIEMAP_FLAG_SYNC
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, _FIEMAP, request)
    finally:
        os.close(fd)
    return _FIEMAP_HEADER.unpack_from(request)[3]


_libc = ctypes.CDLL(None, use_errno=True)


def commit_filesystem(path: Path) -> None:
    """What the filesystem does every 30 s on its own: commit (syncfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def appvm_volumes(pool: Any, template_root: Any) -> list[Any]:
    common = {"rw": True, "size": 10 * GiB}
    return [
        pool.init_volume(None, {**common, "name": "root", "vid": "appvms/work/root",
                                "snap_on_start": True, "save_on_stop": False},
                         template_root),
        pool.init_volume(None, {**common, "name": "private", "vid": "appvms/work/private",
                                "snap_on_start": False, "save_on_stop": True,
                                "revisions_to_keep": 1}),
        pool.init_volume(None, {**common, "name": "volatile", "vid": "appvms/work/volatile",
                                "snap_on_start": False, "save_on_stop": False}),
    ]


async def start_stop(volumes: list[Any]) -> None:
    await asyncio.gather(*(v.start() for v in volumes))
    await asyncio.gather(*(v.stop() for v in volumes))


async def make_pool_images(pool: Any, data_from: tuple[str, str] | None) -> list[Any]:
    """Template root and AppVM volumes of ``pool``; data written, or copied without sharing."""
    template_root = pool.init_volume(None, {"name": "root", "vid": "vm-templates/tpl/root",
                                            "rw": True, "size": 10 * GiB,
                                            "save_on_stop": True, "revisions_to_keep": 1})
    volumes = appvm_volumes(pool, template_root)
    await template_root.create()
    await asyncio.gather(*(v.create() for v in volumes))
    private = volumes[1]
    if data_from is None:
        write_data(template_root.path_clean, 0, 1 * GiB)
        write_data(private.path_clean, 0, 1 * GiB)
    else:
        fileops.copy_file(data_from[0], template_root.path_clean, reflink=False)
        fileops.copy_file(data_from[1], private.path_clean, reflink=False)
    return [template_root, *volumes]


def timed(func: Any) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def bench_filesystem(report: Report, fstype: str, mount: Path) -> None:
    pool = FileReflinkPool(name="bench", dir_path=str(mount / "reflink"))
    pool.setup()
    fallback = FilePool(name="fallback", dir_path=str(mount / "file"))
    fallback.setup()
    template_root, *volumes = asyncio.run(make_pool_images(pool, None))
    asyncio.run(start_stop(volumes))  # first stop makes the precache

    copies = [str(mount / "cp-root.img"), str(mount / "cp-private.img")]

    def clone_copies() -> None:
        for source, copy in ((template_root.path_clean, copies[0]),
                             (volumes[1].path_clean, copies[1])):
            src = os.open(source, os.O_RDONLY)
            try:
                dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    fileops.reflink_fd(src, dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)

    def drop_copies() -> None:
        for path in copies:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def durable_copies() -> None:
        """What a crash-safe commit adds to the floor: data, then the name, synced."""
        fd = os.open(copies[1], os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        fileops.fsync_dir(mount)

    async def start_all() -> None:
        await asyncio.gather(*(v.start() for v in volumes))

    async def stop_all() -> None:
        await asyncio.gather(*(v.stop() for v in volumes))

    # Back to back: start, stop, start, ... with nothing in between; interleaved with the
    # floor so that neither pays for the other's leftover work at a commit.
    samples: dict[str, list[float]] = {"driver": [], "floor": [], "durable": [],
                                       "driver-apart": [], "floor-apart": [],
                                       "durable-apart": []}
    for _ in range(CYCLE_REPEAT):
        commit_filesystem(mount)
        samples["driver"].append(timed(lambda: asyncio.run(start_stop(volumes))))
        commit_filesystem(mount)
        samples["floor"].append(timed(lambda: (clone_copies(), drop_copies())))
        commit_filesystem(mount)
        samples["durable"].append(timed(lambda: (clone_copies(), durable_copies(),
                                                 drop_copies())))
        # A commit apart: the filesystem commits (untimed) between start and stop.
        commit_filesystem(mount)
        up = timed(lambda: asyncio.run(start_all()))
        commit_filesystem(mount)
        samples["driver-apart"].append(up + timed(lambda: asyncio.run(stop_all())))
        commit_filesystem(mount)
        up = timed(clone_copies)
        commit_filesystem(mount)
        samples["floor-apart"].append(up + timed(drop_copies))
        commit_filesystem(mount)
        up = timed(clone_copies)
        commit_filesystem(mount)
        samples["durable-apart"].append(up + timed(lambda: (durable_copies(), drop_copies())))
    med = {key: statistics.median(values) for key, values in samples.items()}

    _tpl, *slow = asyncio.run(make_pool_images(
        fallback, (template_root.path_clean, volumes[1].path_clean)))
    sparse = median_time(lambda: asyncio.run(start_stop(slow)), repeat=FALLBACK_REPEAT)
    shutil.rmtree(mount / "file")

    for case, suffix in (("back to back", ""), ("a commit apart", "-apart")):
        driver, floor, durable = (med[k + suffix] for k in ("driver", "floor", "durable"))
        report.time(f"{fstype}: AppVM start+stop, file-reflink ({case})", driver,
                    "private 10 GiB sparse / 1 GiB data")
        report.time(f"{fstype}: FICLONE root+private, rm (floor, {case})", floor,
                    "nothing made durable")
        report.time(f"{fstype}: floor + fdatasync + dir fsync ({case})", durable,
                    "the two syncs a crash-safe commit needs")
        report.ratio(f"{fstype}: file-reflink / floor ({case})", driver, floor, "goal: <= 1.5x")
        report.ratio(f"{fstype}: file-reflink / floor with syncs ({case})", driver, durable)
    report.time(f"{fstype}: AppVM start+stop, sparse copies (fallback)", sparse)
    report.ratio(f"{fstype}: fallback / file-reflink", sparse, med["driver"], "how far ahead")

    # Snapshot cost as the source grows: one snap_on_start start (link + reflink).
    for layout, holes in (("contiguous", False), ("fragmented", True)):
        bench_snapshots(report, fstype, pool, layout, holes)
        commit_filesystem(mount)


def bench_snapshots(report: Report, fstype: str, pool: FileReflinkPool, layout: str,
                    holes: bool) -> None:
    """Cost of one snapshot of a source holding 1, 4, 8 GiB of data laid out as ``layout``."""
    source = pool.init_volume(None, {"name": "root", "vid": f"vm-templates/{layout}/root",
                                     "rw": True, "size": 20 * GiB, "save_on_stop": True,
                                     "revisions_to_keep": 0})
    asyncio.run(source.create())
    snap = pool.init_volume(None, {"name": "root", "vid": f"appvms/{layout}/root", "rw": True,
                                   "size": 20 * GiB, "snap_on_start": True,
                                   "save_on_stop": False}, source)
    end, have, costs, counts = 0, 0, {}, {}
    for target in (1, 4, 8):
        end = write_data(source.path_clean, end, (target - have) * GiB, holes=holes)
        have = target
        costs[target] = median_time(lambda: asyncio.run(snap.start()), repeat=REPEAT,
                                    setup=lambda: asyncio.run(snap.stop())
                                    if os.path.exists(snap.path_dirty) else None)
        asyncio.run(snap.stop())
        counts[target] = extent_count(source.path_clean)
        report.time(f"{fstype}: snapshot of {target} GiB, {layout}", costs[target],
                    f"{counts[target]} extents")
    report.ratio(f"{fstype}: snapshot 8 GiB / 1 GiB, {layout}", costs[8], costs[1],
                 f"bytes x8, extents x{counts[8] / max(counts[1], 1):.1f}")
    asyncio.run(source.remove())


def missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop mounts)"
    for tool in ("losetup", "mount", "cp", *(cmd[0] for cmd in MKFS.values())):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices"
    return None


def run(report: Report) -> None:
    reason = missing_requirement()
    if reason is not None:
        report.value("storage benchmark", "skipped", reason)
        return
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as workdir:
        for fstype in MKFS:
            with loop_mount(fstype, Path(workdir)) as mount:
                bench_filesystem(report, fstype, mount)
