"""``admin.Events``: a stream of the model's events until the client hangs up.

The stream starts with ``connection-established`` (subject empty). Then every
event of the app (subject empty) and of the VMs (subject: the VM's name) is
sent, except the ``admin-permission:*`` events; with a VM as destination only
that VM's events are sent. Keyword arguments go as text: a VM by its name,
None as the empty string. A client that falls too far behind is dropped rather
than let the server's memory grow.

A caller whose listings the policy filters (the callables its
``admin-permission`` handlers returned) gets only the events of VMs those
filters let through, and only the app events whose VM arguments all pass them
(``domain-add vm=X`` names X). A VM's removal is judged as the VM was seen just
before it left the model (``domain-pre-delete``), since a filter that asks the
model no longer finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from qubes_core import protocol
from qubes_core.api.call import NO_REPLY, ApiCall, NoReply
from qubes_core.api.registry import method

log = logging.getLogger("qubes.api.events")

MAX_QUEUED = 10000


def _text(value: Any) -> str:
    if value is None:
        return ""
    name = getattr(value, "name", None)
    if name is not None and hasattr(value, "qid"):
        return str(name)
    return str(value)


def _is_vm(value: Any) -> bool:
    return hasattr(value, "qid") and hasattr(value, "name")


class Subscriber:
    """One ``admin.Events`` client: its bounded queue of records and what its policy
    filters let it see of the VMs.
    """

    def __init__(self, only: str | None, filters: list[Any]):
        self.only = only
        self.filters = filters
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_QUEUED)
        self.overflowed = False
        # id(vm) -> whether this caller saw the VM just before it left the model.
        self.leaving: dict[int, bool] = {}

    def sees(self, vm: Any) -> bool:
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

    def may_receive(self, app: Any, subject: Any, name: str, kwargs: dict[str, Any]) -> bool:
        if self.only is not None and name != self.only:
            return False
        if not self.filters:
            return True
        if subject is not app:
            return self.sees(subject)
        return all(self.sees(value) for value in kwargs.values() if _is_vm(value))


class EventBroadcaster:
    """Hears every event of the app and its VMs and hands them to the subscribers."""

    def __init__(self, app: Any):
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

    def _hook_vm(self, vm: Any) -> None:
        if id(vm) not in self._hooked:
            vm.add_handler("*", self._on_event)
            self._hooked.add(id(vm))

    def subscribe(self, only: str | None, filters: list[Any]) -> Subscriber:
        if not self.subscribers:
            self._hook()
        subscriber = Subscriber(only, filters)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if not self.subscribers:
            self._unhook()

    def _on_event(self, subject: Any, event: str, **kwargs: Any) -> None:
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
            try:
                subscriber.queue.put_nowait(record)
            except asyncio.QueueFull:
                subscriber.overflowed = True
                with contextlib.suppress(asyncio.QueueFull):
                    subscriber.queue.get_nowait()
                    subscriber.queue.put_nowait(None)
        if leaving is not None:
            for subscriber in self.subscribers:
                subscriber.leaving.pop(id(leaving), None)


def broadcaster(server: Any) -> EventBroadcaster:
    """The server's one broadcaster, made on the first ``admin.Events`` call."""
    found = getattr(server, "event_broadcaster", None)
    if found is None:
        found = server.event_broadcaster = EventBroadcaster(server.app)
    return found


@method("admin.Events", scope="global", read=True, dest="any")
async def events(call: ApiCall) -> NoReply:
    """Stream the model's events (all VMs for dom0, else one VM) until the client hangs up
    or falls too far behind.
    """
    connection = getattr(call, "connection", None)
    if connection is None or call.server is None:
        raise RuntimeError("admin.Events needs a connection to stream to")
    hub = broadcaster(call.server)
    only = None if call.dest.qid == 0 else call.dest.name
    subscriber = hub.subscribe(only, call.filters)
    hangup = asyncio.ensure_future(connection.wait_hangup())
    try:
        await connection.send(protocol.encode_event("", "connection-established", {}))
        while True:
            getter = asyncio.ensure_future(subscriber.queue.get())
            done, _ = await asyncio.wait({getter, hangup},
                                         return_when=asyncio.FIRST_COMPLETED)
            if hangup in done:
                getter.cancel()
                break
            record = getter.result()
            if record is None:
                log.warning("dropping an events client that fell %d events behind",
                            MAX_QUEUED)
                break
            await connection.send(record)
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        hangup.cancel()
        hub.unsubscribe(subscriber)
    return NO_REPLY
