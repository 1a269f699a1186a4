"""The clock that decides when a firewall rule has expired.

Expiry is wall-clock time (``expire`` is seconds since the epoch), so the
clock can jump; the scheduler also needs a monotonic clock to notice that.
Each app has one clock, :class:`SystemClock` unless a test or simulation sets
a :class:`ManualClock`, which moves only when told and wakes sleepers then.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from qubes_core.app import Qubes


class Clock(Protocol):
    """What expiry needs of a clock."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps."""

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Done once ``seconds`` passed on this clock."""


class SystemClock:
    """The machine's clocks."""

    def time(self) -> float:
        """Seconds since the epoch (wall clock: rules expire by it)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds of a clock that never jumps (to tell a wall-clock jump)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told: ``advance`` (time passes), ``jump`` (clock set)."""

    def __init__(self, start: float | None = None):
        self._wall = time.time() if start is None else start
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        """Seconds since the epoch (wall clock: rules expire by it)."""
        return self._wall

    def monotonic(self) -> float:
        """Seconds of a clock that never jumps (to tell a wall-clock jump)."""
        return self._mono

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """A future that completes once ``seconds`` passed, counted from this call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._mono + seconds, future)
        if seconds <= 0:
            future.set_result(None)
            return future
        self._sleepers.append(entry)

        def forget(_: object) -> None:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

        future.add_done_callback(forget)
        return future

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: both clocks move; sleepers whose time came wake."""
        self._wall += seconds
        self._mono += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self._mono and not future.done():
                future.set_result(None)

    def jump(self, seconds: float) -> None:
        """Set the wall clock ``seconds`` forward (or back); no time passes."""
        self._wall += seconds


_clocks: weakref.WeakKeyDictionary[Qubes, Clock] = weakref.WeakKeyDictionary()
SYSTEM_CLOCK = SystemClock()


def clock_of(app: Qubes) -> Clock:
    """The clock of ``app`` (the system clock unless one was set)."""
    return _clocks.get(app, SYSTEM_CLOCK)


def set_clock(app: Qubes, clock: Clock) -> None:
    """Make ``clock`` decide expiry for every firewall of ``app``."""
    _clocks[app] = clock
