"""libvirt's event loop, and what its lifecycle events mean to the model.

libvirt delivers domain events only while an event loop implementation runs.
We register libvirt's own default implementation once per process and run it
in a daemon thread; a runtime's callback then hands each event over to its
asyncio loop (``loop.call_soon_threadsafe``), so model events are always fired
from the loop's thread. The thread serves every connection of the process,
whichever asyncio loop each runtime currently uses.
"""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger("qubes.backend.libvirt")

_lock = threading.Lock()
_thread: threading.Thread | None = None

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


def _run_forever() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("libvirt's event loop failed; domain events may be late")


def _ignore_error(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; they reach us as exceptions."""


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and start its thread (once per process)."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.registerErrorHandler(_ignore_error, None)
        if libvirt.virEventRegisterDefaultImpl() < 0:
            raise RuntimeError("cannot register libvirt's default event loop")
        _thread = threading.Thread(target=_run_forever, name="libvirt-events", daemon=True)
        _thread.start()


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
