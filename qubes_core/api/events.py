"""``admin.Events``: a stream of the model's events until the client hangs up.

The stream starts with ``connection-established`` (subject empty). Then every
event of the app (subject empty) and of the VMs (subject: the VM's name) is
sent, except the ``admin-permission:*`` events; with a VM as destination only
that VM's events are sent. Keyword arguments go as text: a VM by its name,
None as the empty string.

Memory: what waits for a client is bounded, in events (:data:`MAX_QUEUED`) and
in bytes (:data:`MAX_QUEUED_BYTES`: one record may carry a 64 KiB feature
value). A client that falls further behind (it stopped reading, or reads more
slowly than events come) is dropped rather than let the server's memory grow:
its queue is freed at once, it gets a last record ``connection-dropped`` (subject
empty, ``reason=...``) so that it knows to reconnect and read the state again,
and its connection is closed; one that does not take that record within
:data:`DROP_GRACE` seconds is cut off.

A caller whose listings the policy filters (the callables its
``admin-permission`` handlers returned) gets only the events of VMs those
filters let through, and only the app events whose VM arguments all pass them
(``domain-add vm=X`` names X). A VM's removal is judged as the VM was seen just
before it left the model (``domain-pre-delete``), since a filter that asks the
model no longer finds it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from qubes_core import protocol
from qubes_core.api.call import NO_REPLY, ApiCall, NoReply
from qubes_core.api.registry import method
from qubes_core.vm.base import BaseVM

if TYPE_CHECKING:
    from qubes_core.api.server import QubesdServer
    from qubes_core.app import Qubes

log = logging.getLogger("qubes.api.events")

MAX_QUEUED = 10000
MAX_QUEUED_BYTES = 16 * 1024 * 1024
DROP_GRACE = 10.0
DROPPED_EVENT = "connection-dropped"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, BaseVM):
        return value.name
    return str(value)


class Subscriber:
    """One ``admin.Events`` client: its bounded queue of records and what its policy
    filters let it see of the VMs.
    """

    def __init__(self, only: str | None, filters: list[Any]):
        self.only = only
        self.filters = filters
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.ready = asyncio.Event()  # something is queued, or the client is dropped
        self.dropped = asyncio.Event()
        self.drop_reason = ""
        # id(vm) -> whether this caller saw the VM just before it left the model.
        self.leaving: dict[int, bool] = {}

    def push(self, record: bytes) -> None:
        """Queue ``record``, or drop the client if that would pass either bound."""
        if self.dropped.is_set():
            return
        if len(self.queue) >= MAX_QUEUED:
            self.drop(f"more than {MAX_QUEUED} events waiting")
        elif self.queued_bytes + len(record) > MAX_QUEUED_BYTES:
            self.drop(f"more than {MAX_QUEUED_BYTES} bytes of events waiting")
        else:
            self.queue.append(record)
            self.queued_bytes += len(record)
            self.ready.set()

    def drop(self, reason: str) -> None:
        """Free the queue; the stream ends with the drop record."""
        self.queue.clear()
        self.queued_bytes = 0
        self.drop_reason = reason
        self.dropped.set()
        self.ready.set()

    async def next(self) -> bytes | None:
        """The next record to send; None once the client is dropped."""
        while not self.queue and not self.dropped.is_set():
            self.ready.clear()
            await self.ready.wait()
        if self.dropped.is_set():
            return None
        record = self.queue.popleft()
        self.queued_bytes -= len(record)
        return record

    def sees(self, vm: BaseVM) -> bool:
        """Whether every filter lets ``vm`` through (a failing filter hides it)."""
        if not self.filters:
            return True
        if id(vm) in self.leaving and vm.app.domains.get(vm.qid) is not vm:
            return self.leaving[id(vm)]
        try:
            return all(check(vm) for check in self.filters)
        except Exception:
            log.exception("an events filter failed on %s; not sending its events", vm)
            return False

    def may_receive(self, app: Qubes, subject: BaseVM | Qubes, name: str,
                    kwargs: dict[str, Any]) -> bool:
        """Whether this subscriber is shown ``name`` of ``subject`` (its VM and its filters)."""
        if self.only is not None and name != self.only:
            return False
        if not self.filters:
            return True
        if isinstance(subject, BaseVM):
            return self.sees(subject)
        return all(self.sees(value) for value in kwargs.values() if isinstance(value, BaseVM))


class EventBroadcaster:
    """Hears every event of the app and its VMs and hands them to the subscribers."""

    def __init__(self, app: Qubes):
        self.app = app
        self.subscribers: set[Subscriber] = set()
        self._hooked: set[int] = set()

    def _hook(self) -> None:
        self.app.add_handler("*", self._on_event)
        for vm in self.app.domains:
            self._hook_vm(vm)

    def _unhook(self) -> None:
        self.app.remove_handler("*", self._on_event)
        for vm in self.app.domains:
            if id(vm) in self._hooked:
                vm.remove_handler("*", self._on_event)
        self._hooked.clear()

    def _hook_vm(self, vm: BaseVM) -> None:
        if id(vm) not in self._hooked:
            vm.add_handler("*", self._on_event)
            self._hooked.add(id(vm))

    def subscribe(self, only: str | None, filters: list[Any]) -> Subscriber:
        """A new subscriber to every event (``only``: of that VM), listings filtered."""
        if not self.subscribers:
            self._hook()
        subscriber = Subscriber(only, filters)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop sending to ``subscriber``; the model's handlers go with the last one."""
        self.subscribers.discard(subscriber)
        if not self.subscribers:
            self._unhook()

    def _on_event(self, subject: BaseVM | Qubes, event: str, **kwargs: Any) -> None:
        if event.startswith("admin-permission:"):
            return
        leaving = None
        if subject is self.app:
            vm = kwargs.get("vm")
            if event == "domain-add" and vm is not None:
                self._hook_vm(vm)
            elif event == "domain-pre-delete" and vm is not None:
                for subscriber in self.subscribers:
                    if subscriber.filters:
                        subscriber.leaving[id(vm)] = subscriber.sees(vm)
            elif event == "domain-delete" and vm is not None:
                leaving = vm
                if id(vm) in self._hooked:
                    vm.remove_handler("*", self._on_event)
                    self._hooked.discard(id(vm))
            name = ""
        else:
            name = _text(subject)
        record = None
        for subscriber in list(self.subscribers):
            if not subscriber.may_receive(self.app, subject, name, kwargs):
                continue
            if record is None:
                record = protocol.encode_event(
                    name, event, {k: _text(v) for k, v in kwargs.items()
                                  if not k.startswith("_")})
            subscriber.push(record)
        if leaving is not None:
            for subscriber in self.subscribers:
                subscriber.leaving.pop(id(leaving), None)


def broadcaster(server: QubesdServer) -> EventBroadcaster:
    """The server's one broadcaster, made on the first ``admin.Events`` call."""
    if server.event_broadcaster is None:
        server.event_broadcaster = EventBroadcaster(server.app)
    return server.event_broadcaster


@method("admin.Events", scope="global", read=True, dest="any")
async def events(call: ApiCall) -> NoReply:
    """Stream the model's events (all VMs for dom0, else one VM) until the client hangs up
    or falls too far behind.
    """
    connection = call.connection
    if connection is None or call.server is None:
        raise RuntimeError("admin.Events needs a connection to stream to")
    hub = broadcaster(call.server)
    only = None if call.dest.qid == 0 else call.dest.name
    subscriber = hub.subscribe(only, call.filters)
    hangup = asyncio.ensure_future(connection.wait_hangup())
    dropped = asyncio.ensure_future(subscriber.dropped.wait())
    try:
        record: bytes | None = protocol.encode_event("", "connection-established", {})
        while record is not None:
            # A send waits while the client does not read: a drop ends the wait.
            sending = asyncio.ensure_future(connection.send(record))
            await asyncio.wait({sending, hangup, dropped}, return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():
                sending.cancel()
                break
            sending.result()
            getter = asyncio.ensure_future(subscriber.next())
            await asyncio.wait({getter, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            record = getter.result()
        if subscriber.dropped.is_set() and not hangup.done():
            log.warning("dropping an events client that fell behind: %s",
                        subscriber.drop_reason)
            await connection.finish(
                protocol.encode_event("", DROPPED_EVENT, {"reason": subscriber.drop_reason}),
                DROP_GRACE)
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        hangup.cancel()
        dropped.cancel()
        hub.unsubscribe(subscriber)
    return NO_REPLY
