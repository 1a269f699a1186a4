"""Storage: start+stop of an AppVM's volumes on XFS and btrfs, snapshot cost vs data size.

For each filesystem (a sparse image, loop-mounted, removed afterwards):

- start+stop of an AppVM's volumes (root: snapshot of a template root; private:
  10 GiB sparse holding 1 GiB; volatile: 10 GiB sparse) with the file-reflink
  driver, against (a) ``cp --reflink=always`` of the same two images, measured
  in the same run (the floor: a start must clone each once), and (b) the same
  start+stop with sparse copies (the ``file`` driver, the fallback);
- the cost of one snapshot (a snap_on_start volume's start) as the source holds
  1, 4 and 8 GiB of data: with reflinks it should stay flat.

Needs root, losetup and mkfs.xfs/mkfs.btrfs; otherwise it says so and skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
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


def write_data(path: str, start: int, amount: int) -> int:
    """Write ``amount`` bytes of data from ``start`` in pieces with holes; return the end."""
    piece = os.urandom(CHUNK)
    fd = os.open(path, os.O_WRONLY)
    try:
        offset, written = start, 0
        while written < amount:
            os.pwrite(fd, piece, offset)
            written += CHUNK
            offset += 2 * CHUNK
        os.fsync(fd)
    finally:
        os.close(fd)
    return offset


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


def bench_filesystem(report: Report, fstype: str, mount: Path) -> None:
    pool = FileReflinkPool(name="bench", dir_path=str(mount / "reflink"))
    pool.setup()
    fallback = FilePool(name="fallback", dir_path=str(mount / "file"))
    fallback.setup()
    template_root, *volumes = asyncio.run(make_pool_images(pool, None))
    asyncio.run(start_stop(volumes))  # first stop makes the precache
    driver = median_time(lambda: asyncio.run(start_stop(volumes)), repeat=REPEAT)

    copies = [str(mount / "cp-root.img"), str(mount / "cp-private.img")]

    def cp_copies() -> None:
        subprocess.run(["cp", "--reflink=always", template_root.path_clean, copies[0]],
                       check=True)
        subprocess.run(["cp", "--reflink=always", volumes[1].path_clean, copies[1]],
                       check=True)

    def drop_copies() -> None:
        for path in copies:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def cp_and_rm() -> None:
        cp_copies()
        drop_copies()

    cp_only = median_time(cp_copies, repeat=REPEAT, setup=drop_copies)
    drop_copies()
    floor = median_time(cp_and_rm, repeat=REPEAT)

    _tpl, *slow = asyncio.run(make_pool_images(
        fallback, (template_root.path_clean, volumes[1].path_clean)))
    sparse = median_time(lambda: asyncio.run(start_stop(slow)), repeat=FALLBACK_REPEAT)
    shutil.rmtree(mount / "file")

    report.time(f"{fstype}: AppVM start+stop, file-reflink", driver,
                "private 10 GiB sparse / 1 GiB data")
    report.time(f"{fstype}: cp --reflink=always of root+private", cp_only)
    report.time(f"{fstype}: same cp, then rm of the copies (floor)", floor,
                "a start+stop clones and frees each image once")
    report.time(f"{fstype}: AppVM start+stop, sparse copies (fallback)", sparse)
    report.ratio(f"{fstype}: file-reflink / floor", driver, floor, "goal: <= 1.5x")
    report.ratio(f"{fstype}: fallback / file-reflink", sparse, driver, "how far ahead")

    # Snapshot cost as the source grows: one snap_on_start start (link + reflink).
    source = pool.init_volume(None, {"name": "root", "vid": "vm-templates/big/root",
                                     "rw": True, "size": 20 * GiB, "save_on_stop": True,
                                     "revisions_to_keep": 0})
    asyncio.run(source.create())
    snap = pool.init_volume(None, {"name": "root", "vid": "appvms/snap/root", "rw": True,
                                   "size": 20 * GiB, "snap_on_start": True,
                                   "save_on_stop": False}, source)
    end, have, costs = 0, 0, {}
    for target in (1, 4, 8):
        end = write_data(source.path_clean, end, (target - have) * GiB)
        have = target
        costs[target] = median_time(lambda: asyncio.run(snap.start()), repeat=REPEAT,
                                    setup=lambda: asyncio.run(snap.stop())
                                    if os.path.exists(snap.path_dirty) else None)
        asyncio.run(snap.stop())
        extents = sum(1 for _ in fileops._data_segments_of(source.path_clean))
        report.time(f"{fstype}: snapshot (start) of a source with {target} GiB data",
                    costs[target], f"{extents} data extents")
    report.ratio(f"{fstype}: snapshot cost 8 GiB / 1 GiB", costs[8], costs[1],
                 "bytes x8, extents x8")
    report.ratio(f"{fstype}: sparse copy of 1 GiB / snapshot of 8 GiB", sparse / 2,
                 costs[8], "fallback per GiB vs reflink")


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
