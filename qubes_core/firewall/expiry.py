"""qubesd's schedule of expiring firewall rules: no rule stays in force past its time.

One asyncio task per app sleeps until the nearest ``expire`` of any VM, then
removes the rules whose time came from memory and from firewall.xml, and
re-exports them (``firewall-changed``). The schedule is built when qubesd
starts, after dropping what expired while it was down, and rebuilt whenever
the wall clock jumps: while any rule is due to expire the task wakes at least
every :data:`JUMP_CHECK` seconds and compares the wall clock with the
monotonic one.

Entries are ``(expire, qid)`` in a heap, with the one current entry of each VM
remembered beside it; a VM whose rules changed gets a new entry and its old one
is skipped when it comes up.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import weakref
from typing import TYPE_CHECKING

from qubes_core.firewall.clock import Clock, clock_of
from qubes_core.firewall.vmfirewall import firewall_of, has_firewall

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.qubesvm import QubesVM

log = logging.getLogger("qubes.firewall.expiry")

#: Longest sleep while a rule is due to expire (bounds how late a clock jump is seen).
JUMP_CHECK = 1.0
#: A wall clock that moved this much more (or less) than the monotonic one jumped.
JUMP_TOLERANCE = 0.5


def firewall_vms(app: Qubes) -> list[QubesVM]:
    """VMs that can have a firewall (every VM with a netvm property)."""
    return [vm for vm in app.domains if has_firewall(vm)]


class ExpirySchedule:
    """The expiry schedule of one app; :meth:`start` in qubesd, :meth:`stop` at exit."""

    def __init__(self, app: Qubes):
        self.app = app
        self._heap: list[tuple[int, int]] = []
        self._scheduled: dict[int, int] = {}  # qid -> its current entry's expire
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._offset: float | None = None  # wall minus monotonic at the last check
        self.rebuilds = 0

    @property
    def clock(self) -> Clock:
        """The app's clock."""
        return clock_of(self.app)

    @property
    def running(self) -> bool:
        """Whether the schedule's task runs."""
        return self._task is not None and not self._task.done()

    # --- building ---------------------------------------------------------

    def rebuild(self) -> None:
        """Drop what already expired, then schedule the nearest expiry of every VM."""
        self._heap, self._scheduled = [], {}
        for vm in firewall_vms(self.app):
            firewall = firewall_of(vm)
            if not firewall.has_file():
                continue  # default rules: nothing expires
            firewall.drop_expired()
            self._push(vm)
        self.rebuilds += 1
        self._offset = self.clock.time() - self.clock.monotonic()
        self._wake()

    def note_changed(self, vm: QubesVM) -> None:
        """``vm``'s rules changed: schedule its nearest expiry."""
        if self._push(vm):
            self._wake()

    def forget(self, vm: QubesVM) -> None:
        """``vm`` was removed: its entry goes."""
        self._scheduled.pop(vm.qid, None)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _push(self, vm: QubesVM) -> bool:
        expire = firewall_of(vm).nearest_expiry()
        if expire is None:
            self._scheduled.pop(vm.qid, None)
            return False
        if self._scheduled.get(vm.qid) == expire:
            return False
        self._scheduled[vm.qid] = expire
        heapq.heappush(self._heap, (expire, vm.qid))
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._heap = [(when, qid) for qid, when in self._scheduled.items()]
            heapq.heapify(self._heap)
        return True

    def _drop_stale(self) -> None:
        while self._heap and self._scheduled.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def next_expiry(self) -> int | None:
        """When the next rule expires (seconds since the epoch); None if none will."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    # --- running ----------------------------------------------------------

    def start(self) -> None:
        """Build the schedule and start the task (in a running event loop)."""
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self.rebuild()
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="firewall-expiry")

    async def stop(self) -> None:
        """Stop the schedule's task."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def expire_due(self) -> list[QubesVM]:
        """Remove every rule whose time came (firewall.xml written in a worker thread);
        return the VMs that lost rules."""
        now = self.clock.time()
        changed = []
        while (nearest := self.next_expiry()) is not None and nearest <= now:
            _, qid = heapq.heappop(self._heap)
            del self._scheduled[qid]
            vm = self.app.domains.get(qid)
            if vm is None or not vm.has_property("netvm"):
                continue
            if await firewall_of(vm).drop_expired_async():
                changed.append(vm)
            self._push(vm)
        return changed

    def _clock_jumped(self) -> bool:
        offset = self.clock.time() - self.clock.monotonic()
        jumped = self._offset is not None and abs(offset - self._offset) > JUMP_TOLERANCE
        if jumped:
            log.warning("wall clock jumped by %+.1f s: rebuilding the firewall expiry "
                        "schedule", offset - (self._offset or 0.0))
        self._offset = offset
        return jumped

    async def _run(self) -> None:
        while True:
            try:
                if self._clock_jumped():
                    self.rebuild()
                await self.expire_due()
            except Exception:  # one broken VM must not stop expiry for the others
                log.exception("firewall expiry failed; retrying in %s s", JUMP_CHECK)
                await self.clock.sleep(JUMP_CHECK)
                continue
            assert self._wakeup is not None
            self._wakeup.clear()
            nearest = self.next_expiry()
            if nearest is None:
                await self._wakeup.wait()
                self._offset = self.clock.time() - self.clock.monotonic()
                continue
            delay = min(max(nearest - self.clock.time(), 0.0), JUMP_CHECK)
            sleeper = asyncio.ensure_future(self.clock.sleep(delay))
            waker = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()


_schedules: weakref.WeakKeyDictionary[Qubes, ExpirySchedule] = weakref.WeakKeyDictionary()


def schedule_of(app: Qubes) -> ExpirySchedule:
    """The one expiry schedule of ``app``."""
    schedule = _schedules.get(app)
    if schedule is None:
        schedule = _schedules[app] = ExpirySchedule(app)
    return schedule
