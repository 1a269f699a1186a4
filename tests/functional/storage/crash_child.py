"""A process that works on one volume until it is killed (the crash test's victim).

Run as ``python -m tests.functional.storage.crash_child POOL_DIR JOURNAL SEED
SETUP_CHECK``. Before each operation it appends to the journal which
generations the clean image may hold if the process dies during it
(``begin OP A B``) and after it which one it holds (``end OP G``); the test
kills it at random moments and checks the clean image against that. Its
first line, ``ready G``, gives the generation it found.

An image of generation G holds the marker ``GEN<G>`` at every MARKER_OFFSETS
position and a bulk of data from that generation, so a torn image shows.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from qubes_core.storage.reflink import FileReflinkPool

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


def write_generation(path: str, generation: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in MARKER_OFFSETS:
            os.pwrite(fd, marker(generation), offset)
        os.pwrite(fd, _bulk(generation), BULK_OFFSET)
        os.fsync(fd)
    finally:
        os.close(fd)


def make_volumes(pool_dir: str, setup_check: str) -> tuple[FileReflinkPool, object, object]:
    pool = FileReflinkPool(name="crash", dir_path=pool_dir, setup_check=setup_check,
                           revisions_to_keep="2")
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


async def work(pool_dir: str, journal_path: str, seed: int, setup_check: str) -> None:
    rng = random.Random(seed)
    _pool, volume, other = make_volumes(pool_dir, setup_check)
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
            write_generation(volume.path_dirty, new)
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
    asyncio.run(work(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
