"""Waiting and gates: how a test waits for what the code under test does.

A test never sleeps for a time it hopes is long enough. It waits for a
condition (``wait_until``, ``wait_until_async``: the condition is checked again
and again, within a generous bound that only a failure reaches), for an event
(``until``, ``fired``), or it stops the code at a known point and lets it go on
when it has looked (``Gate``: ``gate_event`` holds an event's handlers,
``gate_call`` holds an async method). To show that something did *not* happen,
it first brings the code to the point where it would have happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

#: Bound on every wait: reached only when the awaited thing never comes (a loaded
#: machine with several test suites at once is slow, not this slow).
TIMEOUT = 30.0
#: Pause between two checks of a condition that no event announces.
CHECK_INTERVAL = 0.02


def wait_until(condition: Callable[[], object], timeout: float = TIMEOUT,
               what: str = "condition") -> None:
    """Return once ``condition()`` holds (from a thread with no event loop: a test that
    drives a separate qubesd); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(CHECK_INTERVAL)


async def wait_until_async(condition: Callable[[], object], timeout: float = TIMEOUT,
                           what: str = "condition") -> None:
    """:func:`wait_until` inside the event loop: the loop runs while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(CHECK_INTERVAL)


async def until(event: asyncio.Event, timeout: float = TIMEOUT) -> None:
    """Wait for ``event``; fail after ``timeout`` seconds."""
    await asyncio.wait_for(event.wait(), timeout)


def fired(subject: Any, event: str) -> asyncio.Event:
    """An asyncio event set when ``subject`` (a VM or the app) fires ``event``."""
    seen = asyncio.Event()
    subject.add_handler(event, lambda _subject, _event, **_kwargs: seen.set())
    return seen


async def loop_turns(count: int = 10) -> None:
    """Let the event loop run ``count`` times round (ready callbacks and I/O included):
    what the code would do at once, it has done after this."""
    for _ in range(count):
        await asyncio.sleep(0)


class Gate:
    """A point where the code under test stops until the test lets it go on."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    async def reached(self, timeout: float = TIMEOUT) -> None:
        """Wait until the code stopped at the gate."""
        await until(self.entered, timeout)

    def release(self) -> None:
        """Let the code go on (now and every time it comes back)."""
        self.released.set()

    async def pass_through(self) -> None:
        """Called by the code under test: stop here until released."""
        self.entered.set()
        await self.released.wait()


def gate_event(subject: Any, event: str) -> Gate:
    """Hold ``event`` of ``subject``: a handler that stops at the gate."""
    gate = Gate()

    async def hold(_subject: Any, _event: str, **_kwargs: Any) -> None:
        await gate.pass_through()

    subject.add_handler(event, hold)
    return gate


def gate_call(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> Gate:
    """Hold every call of the async method ``obj.name`` at a gate before it runs."""
    gate = Gate()
    original: Callable[..., Awaitable[Any]] = getattr(obj, name)

    async def held(*args: Any, **kwargs: Any) -> Any:
        await gate.pass_through()
        return await original(*args, **kwargs)

    monkeypatch.setattr(obj, name, held)
    return gate


def spy_call(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> asyncio.Event:
    """An asyncio event set when the async method ``obj.name`` is called (it then runs)."""
    called = asyncio.Event()
    original: Callable[..., Awaitable[Any]] = getattr(obj, name)

    async def spied(*args: Any, **kwargs: Any) -> Any:
        called.set()
        return await original(*args, **kwargs)

    monkeypatch.setattr(obj, name, spied)
    return called
