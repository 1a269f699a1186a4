"""Shared directory fsyncs: concurrent commits in one directory share them, and each
caller returns only after an fsync that began after it asked (on real directories)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from qubes_core.storage import fileops
from tests.support import TIMEOUT


class Callers:
    """``count`` threads that call at once. The first fsync they run waits until all of
    them have asked, so the others come while it runs (no sleep hoping they do)."""

    def __init__(self, count: int):
        self.count = count
        self.times: list[tuple[float, float]] = []
        self._asked = 0
        self._lock = threading.Lock()
        self.all_asked = threading.Event()

    def hold_first(self) -> None:
        """Called in the fsync: wait until every caller asked (once; later fsyncs run)."""
        assert self.all_asked.wait(TIMEOUT), "the callers never all asked"

    def run(self, func: Callable[[], None]) -> list[tuple[float, float]]:
        """Run ``func`` in every thread; (asked, returned) times of each."""
        def caller() -> None:
            asked = time.monotonic()
            with self._lock:
                self._asked += 1
                if self._asked == self.count:
                    self.all_asked.set()
            func()
            self.times.append((asked, time.monotonic()))

        threads = [threading.Thread(target=caller) for _ in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=TIMEOUT)
        assert len(self.times) == self.count
        return self.times


def record_fsyncs(monkeypatch: pytest.MonkeyPatch, callers: Callers | None,
                  fail_at: int | None = None) -> list[tuple[float, float]]:
    """Every real directory fsync as (start, end); the first is held for ``callers``;
    the one numbered ``fail_at`` (from 1) fails with EIO."""
    calls: list[tuple[float, float]] = []
    attempts = []
    real = fileops.fsync_dir

    def recorded_fsync_dir(path):
        attempts.append(path)
        start = time.monotonic()
        if callers is not None and len(attempts) == 1:
            callers.hold_first()
        if len(attempts) == fail_at:
            raise OSError(5, "Input/output error")
        real(path)
        calls.append((start, time.monotonic()))

    monkeypatch.setattr(fileops, "fsync_dir", recorded_fsync_dir)
    return calls


def test_concurrent_requests_share_fsyncs_and_each_is_covered(tmp_path, monkeypatch):
    callers = Callers(8)
    fsyncs = record_fsyncs(monkeypatch, callers)
    callers.run(lambda: fileops.fsync_dir_shared(tmp_path))
    assert 1 <= len(fsyncs) <= 2, "8 concurrent requests need two fsyncs at most"
    for asked, returned in callers.times:
        assert any(asked <= start and end <= returned for start, end in fsyncs), \
            "a caller returned without an fsync that began after it asked"


def test_requests_for_other_directories_are_not_shared(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fsyncs = record_fsyncs(monkeypatch, None)
    threads = [threading.Thread(target=fileops.fsync_dir_shared, args=(tmp_path / name,))
               for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert len(fsyncs) == 2


def test_a_failed_fsync_covers_nobody(tmp_path, monkeypatch):
    """Round 0 succeeds for the first caller; the three that asked meanwhile share round 1,
    which fails: its runner gets the error, the two others must run round 2."""
    callers = Callers(4)
    fsyncs = record_fsyncs(monkeypatch, callers, fail_at=2)
    errors = []

    def call():
        try:
            fileops.fsync_dir_shared(tmp_path)
        except OSError as err:
            errors.append(err)

    callers.run(call)
    assert len(errors) == 1, "only the caller whose fsync failed sees the error"
    assert len(fsyncs) == 2, "the callers it was to cover ran one more fsync"
