"""A process that works on one volume until it is killed (the crash tests' victim).

Run as ``python -m tests.functional.storage.crash_child POOL_DIR JOURNAL SEED
SETUP_CHECK [MUTATION] [power]``. Before each operation it appends to the
journal which generations the clean image may hold if the process dies during
it (``begin OP A B``) and after it which one it holds (``end OP G``); the test
kills it at random moments and checks the clean image against that. Its
first line, ``ready G``, gives the generation it found.

An image of generation G holds the marker ``GEN<G>`` at every MARKER_OFFSETS
position and a bulk of data from that generation, so a torn image shows.

MUTATION names a deliberately broken commit (see ``MUTATIONS``): the tests run
it to prove that they catch what they are meant to catch. ``power`` is the
power-loss mode: the "VM" does not flush what it writes (so only the commit
can make it durable), and a thread keeps forcing the filesystem's log or
transaction to disk (so that a rename not yet ordered after its data gets
written early, as it may be in real life).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import random
import sys
import threading
import time

from qubes_core.storage import fileops
from qubes_core.storage.reflink import FileReflinkPool, FileReflinkVolume

MiB = 1024**2
SIZE = 32 * MiB
BULK = 6 * MiB
MARKER_OFFSETS = [i * 128 * 1024 for i in range(16)]
BULK_OFFSET = 2 * MiB
VID = "appvms/victim/private"
OTHER_VID = "appvms/victim/other"


def marker(generation: int) -> bytes:
    return f"GEN{generation:08d}".encode() * 64


def generation_of(path: str) -> int | None:
    """The generation an image holds, or None if it is torn or empty."""
    if not os.path.exists(path):
        return None
    seen = set()
    with open(path, "rb") as handle:
        for offset in MARKER_OFFSETS:
            handle.seek(offset)
            seen.add(handle.read(len(marker(0))))
        handle.seek(BULK_OFFSET)
        bulk = handle.read(BULK)
    if len(seen) != 1:
        return None
    (found,) = seen
    if found == bytes(len(found)):
        return 0 if bulk == bytes(len(bulk)) else None
    try:
        generation = int(found[3:11])
    except ValueError:
        return None
    if found != marker(generation) or bulk != _bulk(generation):
        return None
    return generation


def _bulk(generation: int) -> bytes:
    block = f"bulk of generation {generation} ".encode()
    return (block * (BULK // len(block) + 1))[:BULK]


def write_generation(path: str, generation: int, flush: bool = True) -> None:
    """What a VM writes; ``flush`` as a VM that shuts down cleanly does."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in MARKER_OFFSETS:
            os.pwrite(fd, marker(generation), offset)
        os.pwrite(fd, _bulk(generation), BULK_OFFSET)
        if flush:
            os.fsync(fd)
    finally:
        os.close(fd)


class InPlaceCommitVolume(FileReflinkVolume):
    """Broken on purpose: the commit writes the new data over the clean image."""

    def _commit(self, path_from: str) -> None:
        with open(path_from, "rb") as src, open(self.path_clean, "r+b") as dst:
            while chunk := src.read(MiB):
                dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        os.unlink(path_from)


class UnorderedCommitVolume(FileReflinkVolume):
    """Broken on purpose: the commit renames before the new data is durable."""

    def _commit(self, path_from: str) -> None:
        fileops.remove(self.path_precache, sync=False)
        self._add_revision()
        fileops.rename(path_from, self.path_clean, sync=False)
        self._sync_dir()
        self._prune_revisions()


MUTATIONS = {"in-place": InPlaceCommitVolume, "unordered": UnorderedCommitVolume}
BTRFS_IOC_START_SYNC = 0x80089418  # _IOR(0x94, 24, __u64)


def force_commits(pool_dir: str) -> None:
    """Keep writing the filesystem's log (XFS) or committing its transaction (btrfs)
    without writing back file data, as other users of the filesystem do."""
    noise = os.path.join(pool_dir, "noise")
    fd = os.open(noise, os.O_WRONLY | os.O_CREAT, 0o600)
    dir_fd = os.open(pool_dir, os.O_RDONLY | os.O_DIRECTORY)
    buf = bytearray(8)
    while True:
        os.pwrite(fd, os.urandom(8), 0)
        os.fsync(fd)  # XFS: a log force, which writes every logged change before it
        try:
            fcntl.ioctl(dir_fd, BTRFS_IOC_START_SYNC, buf)  # btrfs: commit, no data flush
        except OSError as err:
            if err.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        time.sleep(0.002)


def make_volumes(pool_dir: str, setup_check: str, mutation: str = ""
                 ) -> tuple[FileReflinkPool, object, object]:
    pool = FileReflinkPool(name="crash", dir_path=pool_dir, setup_check=setup_check,
                           revisions_to_keep="2")
    if mutation:
        pool.volume_class = MUTATIONS[mutation]
    volume = pool.init_volume(None, {"name": "private", "vid": VID, "size": SIZE,
                                     "rw": True, "save_on_stop": True,
                                     "revisions_to_keep": 2})
    other = pool.init_volume(None, {"name": "other", "vid": OTHER_VID, "size": 16 * MiB,
                                    "rw": True, "save_on_stop": True})
    return pool, volume, other


class Journal:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())
        os.fsync(self.fd)


async def work(pool_dir: str, journal_path: str, seed: int, setup_check: str,
               mutation: str = "", power: bool = False) -> None:
    rng = random.Random(seed)
    _pool, volume, other = make_volumes(pool_dir, setup_check, mutation)
    if power:
        threading.Thread(target=force_commits, args=(pool_dir,), daemon=True).start()
    journal = Journal(journal_path)
    if not os.path.exists(volume.path_clean):
        journal.write("begin create 0")
        await volume.create()
        journal.write("end create 0")
    current = generation_of(volume.path_clean)
    assert current is not None, "the clean image is torn"
    journal.write(f"ready {current}")
    counter = seed * 1000
    while True:
        choice = rng.random()
        if choice < 0.6:
            journal.write(f"begin start {current}")
            await volume.start()
            journal.write(f"end start {current}")
            counter += 1
            new = counter
            write_generation(volume.path_dirty, new, flush=not power)
            journal.write(f"begin stop {current} {new}")
            await volume.stop()
            journal.write(f"end stop {new}")
            current = new
        elif choice < 0.8 and volume.revisions:
            number, stamp = rng.choice(list(volume.revisions.items()))
            target = generation_of(volume.path_revision(number, stamp))
            assert target is not None, "a revision is torn"
            journal.write(f"begin revert {current} {target}")
            await volume.revert(number)
            journal.write(f"end revert {target}")
            current = target
        elif choice < 0.9:
            journal.write(f"begin resize {current}")
            await volume.resize(volume.size + MiB)
            journal.write(f"end resize {current}")
        else:
            journal.write(f"begin create-other {current}")
            await other.create()
            journal.write(f"end create-other {current}")


if __name__ == "__main__":
    args = sys.argv[1:] + [""] * (6 - len(sys.argv[1:]))
    asyncio.run(work(args[0], args[1], int(args[2]), args[3], args[4], args[5] == "power"))
