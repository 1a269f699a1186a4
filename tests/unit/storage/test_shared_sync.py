"""Shared directory fsyncs: concurrent commits in one directory share them, and each
caller returns only after an fsync that began after it asked (on real directories)."""

from __future__ import annotations

import threading
import time

import pytest

from qubes_core.storage import fileops


@pytest.fixture
def recorded_fsyncs(monkeypatch):
    """Every real directory fsync as (start, end), each slowed so that callers overlap."""
    calls: list[tuple[float, float]] = []
    real = fileops.fsync_dir

    def slow_fsync_dir(path):
        start = time.monotonic()
        time.sleep(0.05)
        real(path)
        calls.append((start, time.monotonic()))

    monkeypatch.setattr(fileops, "fsync_dir", slow_fsync_dir)
    return calls


def run_together(count: int, func) -> list[tuple[float, float]]:
    """Run ``func`` in ``count`` threads at once; (asked, returned) times of each."""
    times: list[tuple[float, float]] = []
    barrier = threading.Barrier(count)

    def caller():
        barrier.wait()
        asked = time.monotonic()
        func()
        times.append((asked, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(times) == count
    return times


def test_concurrent_requests_share_fsyncs_and_each_is_covered(tmp_path, recorded_fsyncs):
    callers = run_together(8, lambda: fileops.fsync_dir_shared(tmp_path))
    assert 1 <= len(recorded_fsyncs) <= 2, "8 concurrent requests need two fsyncs at most"
    for asked, returned in callers:
        assert any(asked <= start and end <= returned for start, end in recorded_fsyncs), \
            "a caller returned without an fsync that began after it asked"


def test_requests_for_other_directories_are_not_shared(tmp_path, recorded_fsyncs):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_together(2, lambda: None)
    threads = [threading.Thread(target=fileops.fsync_dir_shared, args=(tmp_path / name,))
               for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(recorded_fsyncs) == 2


def test_a_failed_fsync_covers_nobody(tmp_path, monkeypatch):
    """Round 0 succeeds for the first caller; the three that asked meanwhile share round 1,
    which fails: its runner gets the error, the two others must run round 2."""
    attempts = []
    real = fileops.fsync_dir

    def second_fails(path):
        attempts.append(path)
        time.sleep(0.05)
        if len(attempts) == 2:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(fileops, "fsync_dir", second_fails)
    errors = []

    def call():
        try:
            fileops.fsync_dir_shared(tmp_path)
        except OSError as err:
            errors.append(err)

    run_together(4, call)
    assert len(errors) == 1, "only the caller whose fsync failed sees the error"
    assert len(attempts) == 3, "the callers it was to cover ran one more fsync"
