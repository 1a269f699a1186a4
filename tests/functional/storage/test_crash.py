"""Crash safety: kill (SIGKILL) a process at random points of create/start/stop/commit/
revert/resize, many times, and check the clean image after each kill.

The clean image must always be the old or the new one (never torn), a kept
precache must match it, and the next use must remove the ``~`` leftovers and
log each removal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.functional.storage import crash_child
from tests.functional.storage.conftest import fs_dir

KILLS = 25
REPO = Path(__file__).resolve().parents[3]


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


def run_victim(pool_dir: Path, journal: Path, seed: int, setup_check: str,
               delay: float) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.functional.storage.crash_child", str(pool_dir),
         str(journal), str(seed), setup_check],
        cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while "ready " not in (journal.read_text() if journal.exists() else ""):
            if child.poll() is not None:
                raise AssertionError(f"victim died on its own: {child.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("victim did not get ready within 30 s")
            time.sleep(0.005)
        time.sleep(delay)
        if child.poll() is not None:
            raise AssertionError(f"victim died on its own: {child.stderr.read().decode()}")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()


@pytest.mark.parametrize("fstype", ["xfs", "btrfs", "ext4"])
def test_kill_at_random_points_never_tears_the_clean_image(fstype, filesystems, caplog):
    pool_dir = fs_dir(filesystems, fstype, "crash")
    setup_check = "yes" if fstype != "ext4" else "no"
    _pool, volume, _other = crash_child.make_volumes(str(pool_dir), setup_check)
    rng = random.Random(f"crash-{fstype}")
    inside_operations = 0
    for kill in range(KILLS):
        journal = pool_dir / f"journal-{kill}"
        run_victim(pool_dir, journal, kill + 1, setup_check, rng.uniform(0.0, 0.25))
        allowed = expected_generations(journal)
        inside_operations += journal.read_text().splitlines()[-1].startswith("begin")
        found = crash_child.generation_of(volume.path_clean)
        assert found in allowed, (
            f"kill {kill}: clean image holds generation {found}, expected one of {allowed}; "
            f"journal tail: {journal.read_text().splitlines()[-3:]}")
        if os.path.exists(volume.path_precache):
            assert volume._precache_valid(), f"kill {kill}: a stale precache was kept"
        for revision, stamp in volume.revisions.items():
            assert crash_child.generation_of(volume.path_revision(revision, stamp)) is not None

        # The next use removes (and logs) what the killed process left behind. A dirty
        # image left by a kill is a running VM's disk: the start resumes on it, and the
        # "VM" writes a whole new generation before it stops.
        left = [p for p in leftovers(pool_dir) if "journal" not in p.name]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="qubes.storage.reflink"):
            asyncio.run(volume.start())
            crash_child.write_generation(volume.path_dirty, 900000 + kill)
            asyncio.run(volume.stop())
        assert crash_child.generation_of(volume.path_clean) == 900000 + kill
        messages = "\n".join(r.getMessage() for r in caplog.records)
        for path in left:
            if path.name.startswith("private"):
                assert not path.exists(), f"kill {kill}: leftover {path} was not removed"
                assert str(path) in messages and "leftover" in messages
    # The kills did land inside operations (not only between them).
    assert inside_operations > 0
