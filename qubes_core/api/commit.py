"""Group commit: one save of qubes.xml acknowledges every change made before it began.

Saving the whole model costs the same whether one VM changed or a hundred; what
costs is serializing it (tens of milliseconds at a thousand VMs), not the disk.
So a write call does not save by itself: it applies its change under the
server's write lock, takes a change number, and waits until a save that began
after its change has reached the disk. While one save runs, the changes of
other callers pile up, and the next save covers them all.

A save takes the write lock only to serialize (in the event loop, so the bytes
are a consistent snapshot: no write handler is half-way through), then writes
and fsyncs the file in a worker thread while the loop goes on serving reads and
applying further changes.

A save that fails (a full disk, a read-only or immutable qubes.xml) fails every
call it covered, and their changes stay in effect: the reply says so, and that
qubesd saves them as soon as it can. qubesd then retries by itself, at growing
intervals (:data:`RETRY_FIRST` up to :data:`RETRY_MAX` seconds), until a save
succeeds; any later write's save covers them too. The change is not rolled back
because it is often more than the model: a VM's volumes were created or
removed, a running VM's QubesDB was updated, ``admin.Events`` readers saw it. A
model rolled back alone would disagree with all of these; qubes.xml on disk
stays whole (the old file, until a save succeeds). Only a stop of qubesd
before the disk recovers loses such a change, and the log then says so.

Callers that were just acknowledged usually write again at once. Left alone,
the first of them would start the next save by itself while the others' requests
are still on their way, and batches would shrink to one or two. So when the last
save covered several calls, the next one waits, for at most a quarter of what a
save costs (and never more than :data:`MAX_GATHER` seconds), until as many calls
wait again. A lone writer never waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import TYPE_CHECKING

from qubes_core import exc
from qubes_core.store import serialize

if TYPE_CHECKING:
    from pathlib import Path

    from qubes_core.app import Qubes

log = logging.getLogger("qubes.api.commit")

# Longest wait for more calls before a save (seconds), and the share of the last
# save's duration that waiting may add.
MAX_GATHER = 0.01
GATHER_SHARE = 0.25
# Seconds before the first retry of a failed save, and the longest wait between retries.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0


class GroupCommit:
    """Numbers the model's changes and saves them in batches.

    ``changed()`` is called under ``write_lock`` once a change is applied;
    ``wait_saved(number)`` returns once a save that covers it is on disk, or
    raises what made that save fail. ``saves`` counts the saves that succeeded.
    """

    def __init__(self, app: Qubes, write_lock: asyncio.Lock,
                 executor: concurrent.futures.Executor):
        self.app = app
        self.write_lock = write_lock
        self.executor = executor
        self.saves = 0
        self._changed = 0  # number of the latest change
        self._saved = 0  # every change up to this number is on disk
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._saver: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()  # a call started waiting
        self._last_batch = 0  # calls the last successful save acknowledged
        self._last_duration = 0.0  # seconds the last save took
        self._retrier: asyncio.Task[None] | None = None

    @property
    def unsaved(self) -> bool:
        """Whether a change is in effect that is not yet on disk (its save failed)."""
        return self._saved < self._changed

    @property
    def waiting(self) -> int:
        """How many calls wait for a save."""
        return sum(1 for _, future in self._waiters if not future.done())

    def changed(self) -> int:
        """Record one applied change; its number, for :meth:`wait_saved`."""
        self._changed += 1
        return self._changed

    async def wait_saved(self, number: int) -> None:
        """Return once change ``number`` is on disk; raise if its save failed."""
        if number <= self._saved:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((number, future))
        self._arrived.set()
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_while_waited())
        await future

    async def save_locked(self) -> None:
        """Save now; the caller holds ``write_lock`` (one save per call, no batching)."""
        covered = self._changed
        try:
            await self._write(serialize(self.app))
        except Exception as err:
            self._retry_later()
            raise _save_error(self.app, err) from err
        self._saved = max(self._saved, covered)
        self.saves += 1

    async def drain(self) -> None:
        """At shutdown: wait for the save in progress, if any, and try once more to save
        what a failed save left unsaved (the log says if that is lost)."""
        if self._retrier is not None:
            self._retrier.cancel()
            await asyncio.gather(self._retrier, return_exceptions=True)
        if self._saver is not None and not self._saver.done():
            await asyncio.gather(self._saver, return_exceptions=True)
        if self.unsaved:
            try:
                await self.wait_saved(self._changed)
            except Exception as err:
                log.error("stopping with changes not saved to %s; they are lost: %s",
                          _store_path(self.app), err)

    def _retry_later(self) -> None:
        """Make sure a retry of the failed save is on its way."""
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry())

    async def _retry(self) -> None:
        delay = RETRY_FIRST
        while self.unsaved:
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
            try:
                await self.wait_saved(self._changed)
            except Exception:  # logged by the save; try again later
                continue
            log.info("saved %s: the changes a failed save left unsaved are on disk now",
                     _store_path(self.app))

    async def _save_while_waited(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            await self._gather()
            covered = self._changed
            try:
                async with self.write_lock:
                    started = loop.time()
                    covered = self._changed
                    data = serialize(self.app)
                await self._write(data)
            except Exception as err:  # a failed save fails the calls it covered
                log.error("cannot save %s (%d waiting calls fail; retrying): %s",
                          _store_path(self.app),
                          sum(1 for n, _ in self._waiters if n <= covered), err)
                self._last_batch = 0
                self._settle(covered, err)
                self._retry_later()
                continue
            self._last_duration = loop.time() - started
            self._saved = max(self._saved, covered)
            self.saves += 1
            self._last_batch = self._settle(covered, None)

    async def _gather(self) -> None:
        """After a shared save, give the callers it acknowledged time to come back."""
        if self.waiting >= self._last_batch:
            return
        window = min(MAX_GATHER, GATHER_SHARE * self._last_duration)
        deadline = asyncio.get_running_loop().time() + window
        while self.waiting < self._last_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _write(self, data: bytes) -> None:
        if self.app.store is None:
            raise exc.QubesStoreError("this app has no qubes.xml to save to")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.app.store.write, data)

    def _settle(self, covered: int, error: Exception | None) -> int:
        """Wake the calls whose change is at or below ``covered``; how many woke."""
        pending, woken = [], 0
        for number, future in self._waiters:
            if number > covered:
                pending.append((number, future))
            elif not future.done():  # a cancelled caller (client gone) is skipped
                woken += 1
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(_save_error(self.app, error))
        self._waiters = pending
        return woken


def _store_path(app: Qubes) -> Path | str:
    return app.store.path if app.store is not None else "qubes.xml"


def _save_error(app: Qubes, err: Exception) -> exc.QubesException:
    """What a caller whose change was not saved is told (one exception per caller)."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return exc.QubesStoreError(
        f"the change is in effect but could not be saved to {_store_path(app)}: {reason}; "
        "qubesd saves it as soon as it can (it retries by itself; a stop of qubesd "
        "before then loses it)")
