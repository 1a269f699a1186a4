"""Crash safety: stop a process at random points of create/start/stop/commit/revert/resize,
many times, and check the clean image after each crash.

Two kinds of crash:

- *kill*: SIGKILL of the process. The page cache survives, so this checks
  that every step is atomic (old or new image, never torn) and that the next
  use cleans up, on XFS, btrfs and ext4.
- *power loss*: the filesystem's disk is a loop-mounted image on an XFS
  filesystem; the victim is frozen (SIGSTOP) and the image is reflinked at that
  instant, which keeps exactly what had reached the disk: nothing of the page
  cache. The copy is then mounted (log recovery, log replay) in its place. This
  checks what fsync/fdatasync are for: an operation that returned is durable,
  and a commit never exposes a name before its data.

Each kind also runs against a deliberately broken commit, to show that it
catches what it is meant to catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qubes_core.storage import fileops
from tests.functional.storage import crash_child
from tests.functional.storage.conftest import MKFS, fs_dir, loop_filesystem, require_loop_mounts

KILLS = 25
POWER_LOSSES = 16
MUTANT_TRIES = 30
# A power-cut mutant is found only when the cut lands between the rename and the
# writeback, which depends on timing; stop at the first find, try long enough that
# a loaded machine still finds it (about 0.1-0.3 s a try).
MUTANT_POWER_TRIES = 150
REPO = Path(__file__).resolve().parents[3]
MiB = 1024**2


def expected_generations(journal: Path) -> set[int | None]:
    """Generations the clean image may hold, from the victim's last journal line."""
    lines = [line.split() for line in journal.read_text().splitlines() if line]
    if not lines:
        return {None}
    if lines[-1][0] == "ready":
        return {int(lines[-1][1])}
    kind, op, *numbers = lines[-1]
    values: set[int | None] = {int(n) for n in numbers}
    if op == "create" and kind == "begin":
        values.add(None)  # no image yet is the "old" state of a first create
    return values if kind == "begin" else {int(numbers[-1])}


def leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if "~" in p.name)


@contextlib.contextmanager
def victim(pool_dir: Path, journal: Path, seed: int, setup_check: str, mutation: str = "",
           power: bool = False) -> Iterator[subprocess.Popen]:
    """The victim process, once it is ready; always killed and reaped afterwards."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.functional.storage.crash_child", str(pool_dir),
         str(journal), str(seed), setup_check, mutation, "power" if power else ""],
        cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while "ready " not in (journal.read_text() if journal.exists() else ""):
            if child.poll() is not None:
                raise AssertionError(f"victim died on its own: {child.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("victim did not get ready within 30 s")
            time.sleep(0.005)
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        child.stderr.close()


def check_after_crash(volume, journal: Path, allowed: set[int | None],
                      power: bool = False) -> list[str]:
    """What is wrong with the volume's files after a crash (empty if nothing).

    After a kill every precache is whole. After a power loss, btrfs may bring one
    back empty (see fileops): it must then be seen as stale (and the next use
    drops it, which ``use_after_crash`` checks).
    """
    problems = []
    found = crash_child.generation_of(volume.path_clean)
    if found not in allowed:
        problems.append(f"clean image holds generation {found}, expected one of {allowed}; "
                        f"journal tail: {journal.read_text().splitlines()[-3:]}")
    if os.path.exists(volume.path_precache):
        if not volume._precache_valid():
            if not power:
                problems.append("a stale precache was kept")
        elif crash_child.generation_of(volume.path_precache) != found:
            problems.append(
                f"the precache does not hold the clean image's data (it holds generation "
                f"{crash_child.generation_of(volume.path_precache)} in "
                f"{os.stat(volume.path_precache).st_size} bytes, the clean image {found} in "
                f"{os.stat(volume.path_clean).st_size}; journal tail: "
                f"{journal.read_text().splitlines()[-3:]})")
    for revision, stamp in volume.revisions.items():
        if crash_child.generation_of(volume.path_revision(revision, stamp)) is None:
            problems.append(f"revision {revision} is torn")
    return problems


def use_after_crash(volume, pool_dir: Path, caplog, generation: int) -> None:
    """The next use removes (and logs) what the crashed process left behind. A dirty image
    left by a crash is a running VM's disk: the start resumes on it, and the "VM"
    writes a whole new generation before it stops."""
    left = [p for p in leftovers(pool_dir) if "journal" not in p.name]
    stale = os.path.exists(volume.path_precache) and not volume._precache_valid()
    resumes = os.path.exists(volume.path_dirty)
    clean = crash_child.generation_of(volume.path_clean)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qubes.storage.reflink"):
        asyncio.run(volume.start())
        if not resumes:
            assert crash_child.generation_of(volume.path_dirty) == clean, \
                "the start gave the VM the clean image's data"
        crash_child.write_generation(volume.path_dirty, generation)
        asyncio.run(volume.stop())
    assert crash_child.generation_of(volume.path_clean) == generation
    messages = "\n".join(r.getMessage() for r in caplog.records)
    if stale:
        assert "Removing stale precache" in messages
    for path in left:
        if path.name.startswith("private"):
            assert not path.exists(), f"leftover {path} was not removed"
            assert str(path) in messages and "leftover" in messages


def kill_loop(pool_dir: Path, journals: Path, fstype: str, kills: int, caplog,
              mutation: str = "") -> tuple[list[str], int]:
    """SIGKILL a victim ``kills`` times; return the problems found and how many kills
    landed inside an operation. A mutant run stops at its first problem."""
    setup_check = "yes" if fstype != "ext4" else "no"
    _pool, volume, _other = crash_child.make_volumes(str(pool_dir), setup_check)
    rng = random.Random(f"crash-{fstype}-{mutation}")
    inside = 0
    for kill in range(kills):
        journal = journals / f"journal-{kill}"
        with victim(pool_dir, journal, kill + 1, setup_check, mutation) as child:
            time.sleep(rng.uniform(0.0, 0.25))
            if child.poll() is not None:
                raise AssertionError(f"victim died on its own: {child.stderr.read().decode()}")
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        inside += journal.read_text().splitlines()[-1].startswith("begin")
        problems = check_after_crash(volume, journal, expected_generations(journal))
        if problems:
            return [f"kill {kill}: {p}" for p in problems], inside
        use_after_crash(volume, pool_dir, caplog, 900000 + kill)
    return [], inside


@pytest.mark.parametrize("fstype", ["xfs", "btrfs", "ext4"])
def test_kill_at_random_points_never_tears_the_clean_image(fstype, filesystems, caplog):
    pool_dir = fs_dir(filesystems, fstype, "crash")
    problems, inside = kill_loop(pool_dir, pool_dir, fstype, KILLS, caplog)
    assert problems == []
    assert inside > 0, "the kills did land inside operations (not only between them)"


def test_kill_test_catches_a_commit_in_place(filesystems, caplog):
    pool_dir = fs_dir(filesystems, "xfs", "crash-mutant")
    problems, _inside = kill_loop(pool_dir, pool_dir, "xfs", MUTANT_TRIES, caplog,
                                  mutation="in-place")
    assert problems, "a commit that overwrites the clean image in place went unnoticed"


# --- power loss ---------------------------------------------------------------------


class LoopDisk:
    """A filesystem on an image file that can be "power-cut": the image is reflinked at an
    instant (what the loop device had written by then) and mounted in place of the old."""

    def __init__(self, fstype: str, outer: Path, mount_point: Path):
        self.fstype, self.outer, self.mount_point = fstype, outer, mount_point
        self.generation = 0
        self.image = outer / "disk-0.img"
        self.device: str | None = None
        with open(self.image, "wb") as handle:
            handle.truncate(512 * MiB)
        subprocess.run([*MKFS[fstype][0], str(self.image)], check=True, capture_output=True)
        mount_point.mkdir(exist_ok=True)
        self._attach()

    def _attach(self) -> None:
        self.device = subprocess.run(["losetup", "--find", "--show", str(self.image)],
                                     check=True, capture_output=True, text=True).stdout.strip()
        # A power-cut copy has the UUID of the image it replaces, which XFS refuses while
        # that one is not yet gone (a lazy unmount on a busy machine): skip that check.
        options = ["-o", "nouuid"] if self.fstype == "xfs" else []
        subprocess.run(["mount", *options, self.device, str(self.mount_point)], check=True,
                       capture_output=True)

    def _detach(self) -> None:
        if subprocess.run(["umount", str(self.mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.mount_point)], capture_output=True)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = None

    def power_cut(self, stop_users: Callable[[], None]) -> None:
        """Keep what reached the disk now; mount that (with its recovery) instead, once
        ``stop_users`` has ended every process that has files open on it."""
        self.generation += 1
        crashed = self.outer / f"disk-{self.generation}.img"
        src = os.open(self.image, os.O_RDONLY)
        try:
            dst = os.open(crashed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.ioctl(dst, fileops.FICLONE, src)  # atomic against the loop's writes
            finally:
                os.close(dst)
        finally:
            os.close(src)
        stop_users()
        self._detach()
        self.image.unlink()
        self.image = crashed
        self._attach()

    def close(self) -> None:
        self._detach()
        self.image.unlink(missing_ok=True)


@pytest.fixture
def power_disks(tmp_path):
    """A fresh filesystem of the requested type on an image file on XFS (for reflinks)."""
    made: list[LoopDisk] = []
    with contextlib.ExitStack() as stack:
        def make(fstype: str) -> LoopDisk:
            require_loop_mounts("xfs")
            require_loop_mounts(fstype)
            outer = stack.enter_context(loop_filesystem("xfs", tmp_path, size=4096 * MiB))
            disk = LoopDisk(fstype, outer, tmp_path / f"{fstype}-inner.mnt")
            made.append(disk)
            return disk

        yield make
        for disk in made:
            disk.close()


def power_loop(disk: LoopDisk, journals: Path, cuts: int, caplog,
               mutation: str = "") -> list[str]:
    """Power-cut a victim ``cuts`` times; return the problems found (a mutant run stops
    at its first one)."""
    pool_dir = disk.mount_point / "crash"
    pool_dir.mkdir(exist_ok=True)
    _pool, volume, _other = crash_child.make_volumes(str(pool_dir), "yes")
    rng = random.Random(f"power-{disk.fstype}-{mutation}")
    for cut in range(cuts):
        journal = journals / f"journal-{cut}"
        with victim(pool_dir, journal, cut + 1, "yes", mutation, power=True) as child:
            time.sleep(rng.uniform(0.0, 0.3))
            child.send_signal(signal.SIGSTOP)  # the journal cannot move on any more
            allowed = expected_generations(journal)
            disk.power_cut(lambda: (child.kill(), child.wait(timeout=10)))
        problems = check_after_crash(volume, journal, allowed, power=True)
        if problems:
            return [f"power cut {cut}: {p}" for p in problems]
        use_after_crash(volume, pool_dir, caplog, 900000 + cut)
    return []


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_power_loss_at_random_points_keeps_every_returned_operation(fstype, power_disks,
                                                                    tmp_path, caplog):
    disk = power_disks(fstype)
    assert power_loop(disk, tmp_path, POWER_LOSSES, caplog) == []


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_power_loss_test_catches_a_rename_before_the_data(fstype, power_disks, tmp_path,
                                                          caplog):
    disk = power_disks(fstype)
    problems = power_loop(disk, tmp_path, MUTANT_POWER_TRIES, caplog, mutation="unordered")
    assert problems, "a commit that renames before its data is durable went unnoticed"


# --- power loss right after an operation returned ------------------------------------


def _durable_volume(disk: LoopDisk, generation: int):
    """A committed volume of ``generation``, everything on the disk (``sync``) by now."""
    pool_dir = disk.mount_point / "now"
    pool_dir.mkdir()
    _pool, volume, other = crash_child.make_volumes(str(pool_dir), "yes")
    asyncio.run(volume.create())
    asyncio.run(volume.start())
    crash_child.write_generation(volume.path_dirty, generation)
    asyncio.run(volume.stop())
    os.sync()
    return volume, other


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_power_loss_right_after_a_resize_keeps_the_grown_image(fstype, power_disks):
    """A resize replaces the clean image by a grown reflink: durable once it returns."""
    disk = power_disks(fstype)
    volume, _other = _durable_volume(disk, 7)
    asyncio.run(volume.resize(volume.size + MiB))
    disk.power_cut(lambda: None)
    assert crash_child.generation_of(volume.path_clean) == 7
    assert os.stat(volume.path_clean).st_size == crash_child.SIZE + MiB


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_power_loss_right_after_a_start_without_precache(fstype, power_disks):
    """The dirty image a start copies (durably) holds the clean image's data after a crash."""
    disk = power_disks(fstype)
    volume, _other = _durable_volume(disk, 8)
    fileops.remove(volume.path_precache)
    asyncio.run(volume.start())
    disk.power_cut(lambda: None)
    assert crash_child.generation_of(volume.path_dirty) == 8


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_power_loss_after_a_start_on_the_precache_loses_nothing(fstype, power_disks, caplog):
    """A start takes the precache (a reflink, not synced) as the dirty image; another
    volume's commit in the same directory then makes the new name durable before the
    "VM" flushed anything. On btrfs that name comes back as an empty file: the next
    start must not resume on it (and then commit it), but start from the clean image."""
    disk = power_disks(fstype)
    volume, other = _durable_volume(disk, 8)
    asyncio.run(volume.start())
    crash_child.write_generation(volume.path_dirty, 9)
    asyncio.run(volume.stop())  # durable; its new precache is not (no sync since)
    assert os.path.exists(volume.path_precache)
    asyncio.run(volume.start())
    asyncio.run(other.create())  # fsyncs the directory
    disk.power_cut(lambda: None)
    with caplog.at_level(logging.WARNING, logger="qubes.storage.reflink"):
        asyncio.run(volume.start())
    assert crash_child.generation_of(volume.path_dirty) == 9
    asyncio.run(volume.stop())
    assert crash_child.generation_of(volume.path_clean) == 9


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_power_loss_after_a_stop_leaves_no_empty_precache_to_start_on(fstype, power_disks):
    """A stop leaves a precache (a reflink, not synced); another volume's commit in the same
    directory then makes its name durable. On btrfs it comes back empty but with its xattr:
    the next start must see that it is not the clean image and copy that instead."""
    disk = power_disks(fstype)
    volume, other = _durable_volume(disk, 10)
    asyncio.run(volume.start())
    crash_child.write_generation(volume.path_dirty, 11)
    asyncio.run(volume.stop())
    asyncio.run(other.create())  # fsyncs the directory
    disk.power_cut(lambda: None)
    assert crash_child.generation_of(volume.path_clean) == 11
    asyncio.run(volume.start())
    assert crash_child.generation_of(volume.path_dirty) == 11
