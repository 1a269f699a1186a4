"""libvirt's events on the asyncio loop, and what its lifecycle events mean to the model.

libvirt delivers domain events only through an event loop implementation that
is registered before the connection is opened. We register ``libvirtaio`` (part
of libvirt-python), which runs libvirt's file and timer callbacks as ordinary
callbacks of the asyncio loop: events arrive on the loop's thread, no thread of
ours runs, and nothing blocks the loop while waiting for one. The
implementation serves one loop at a time; :func:`bind_event_loop` moves it to
the running loop (qubesd has one for its whole life; a test suite opens one per
test).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import libvirt
import libvirtaio

log = logging.getLogger("qubes.backend.libvirt")

_lock = threading.Lock()
_error_handler_set = False

# Model event kinds (see qubes_core.backend's docstring for the events they fire).
STARTED, STOPPED, PAUSED, UNPAUSED = "started", "stopped", "paused", "unpaused"

_STOP_REASONS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "snapshot",
}


def _ignore_error(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; they reach us as exceptions."""


class _AsyncIOImpl(libvirtaio.virEventAsyncIOImpl):
    """libvirtaio's implementation, movable to another loop, for loops that may close
    before libvirt lets go.

    libvirt takes one implementation per process: a new loop gets this one moved
    to it (:meth:`move_to`). A connection closed after its loop (a test's teardown)
    makes libvirt remove callbacks whose tasks belong to that closed loop: they are
    dropped instead of raising into libvirt (their small opaque objects are left
    to the process).
    """

    loop: asyncio.AbstractEventLoop

    def move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run every file and timer callback on ``loop`` from now on."""
        old, self.loop = self.loop, loop
        old_open = not old.is_closed()
        for fd, descriptor in list(self.descriptors.items()):
            if old_open:
                old.remove_reader(fd)
                old.remove_writer(fd)
            descriptor.update()  # watches on self.loop
        for callback in list(self.callbacks.values()):
            # libvirtaio keeps a timer's task in ``_task``; it has no public way to move it.
            task = getattr(callback, "_task", None)
            if isinstance(callback, libvirtaio.TimeoutCallback) and task is not None:
                if old_open:
                    task.cancel()
                callback._task = None
                callback.update(callback.timeout)  # restarts it on self.loop

    def _update_handle(self, watch: int, event: int) -> None:
        if not self.loop.is_closed():
            super()._update_handle(watch, event)

    def _remove_handle(self, watch: int) -> int:
        if not self.loop.is_closed():
            return super()._remove_handle(watch)
        callback = self.callbacks.pop(watch, None)
        if callback is not None:
            self.descriptors.pop(callback.descriptor.fd, None)
        return 0

    def _update_timeout(self, timer: int, timeout: int) -> None:
        if not self.loop.is_closed():
            super()._update_timeout(timer, timeout)

    def _remove_timeout(self, timer: int) -> int:
        if not self.loop.is_closed():
            return super()._remove_timeout(timer)
        self.callbacks.pop(timer, None)
        return 0


_impl: _AsyncIOImpl | None = None


def bind_event_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Dispatch libvirt's callbacks from ``loop`` from now on; return whether this changed
    the loop."""
    global _error_handler_set, _impl
    with _lock:
        if not _error_handler_set:
            libvirt.registerErrorHandler(_ignore_error, None)
            _error_handler_set = True
        if _impl is None:
            _impl = _AsyncIOImpl(loop=loop).register()
            return True
        if _impl.loop is loop:
            return False
        _impl.move_to(loop)
        return True


def event_loop() -> asyncio.AbstractEventLoop | None:
    """The loop libvirt's callbacks run on now (None before :func:`bind_event_loop`)."""
    return _impl.loop if _impl is not None else None


def lifecycle_kind(event: int, detail: int) -> tuple[str, str | None] | None:
    """(kind, reason) of a libvirt lifecycle event, or None for ones the model ignores.

    A crash with ``on_crash=destroy`` comes as STOPPED/CRASHED; a CRASHED event
    proper (the domain is kept for a dump) also counts as a stop.
    """
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
        return STARTED, None
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        return STOPPED, _STOP_REASONS.get(detail, "unknown")
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return STOPPED, "crashed"
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        return PAUSED, None
    if event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
        return UNPAUSED, None
    return None
