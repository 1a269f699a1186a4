"""The loop clock of qubesd's slow-callback watch: a callback that blocks the loop is
reported, in the form the functional fixture looks for."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from qubes_core.loopclock import CpuWaitFreeLoop
from tests.functional.api.conftest import SLOW_CALLBACK_RE


def run_in_debug_loop(callback) -> None:
    with asyncio.Runner(loop_factory=CpuWaitFreeLoop) as runner:
        loop = runner.get_loop()
        loop.slow_callback_duration = 0.05
        loop.set_debug(True)

        async def main() -> None:
            done = loop.create_future()
            loop.call_soon(lambda: (callback(), done.set_result(None)))
            await done

        runner.run(main())


def test_a_blocking_callback_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    run_in_debug_loop(lambda: time.sleep(0.2))  # blocks in a system call, as a write would
    slow = [r for r in caplog.records if SLOW_CALLBACK_RE.search(f"asyncio: {r.getMessage()}")]
    assert len(slow) == 1


def test_a_quick_callback_is_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    run_in_debug_loop(lambda: None)
    assert not [r for r in caplog.records if "took" in r.getMessage()]


def test_the_clock_counts_a_sleep_and_never_runs_ahead_of_the_wall_clock() -> None:
    """Time asleep counts (the loop would wait out its timers); only time spent waiting
    for a CPU is left out, so the clock never runs ahead of the wall clock. (The kernel
    accounts the waits in whole scheduler ticks: a few milliseconds of slack.)"""
    loop = CpuWaitFreeLoop()
    try:
        wall = time.monotonic()
        start = loop.time()
        time.sleep(0.1)
        elapsed = loop.time() - start
        assert 0.05 <= elapsed <= time.monotonic() - wall
    finally:
        loop.close()
