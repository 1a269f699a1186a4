"""``admin.Events``: a stream of the model's events until the client hangs up.

The stream starts with ``connection-established`` (subject empty). Then every
event of the app (subject empty) and of the VMs (subject: the VM's name) is
sent, except the ``admin-permission:*`` events; with a VM as destination only
that VM's events are sent. Keyword arguments go as text: a VM by its name,
None as the empty string. A client that falls too far behind is dropped rather
than let the server's memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from qubes_core.api import protocol
from qubes_core.api.call import NO_REPLY, ApiCall
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


class Subscriber:
    def __init__(self, only: str | None, filters: list[Any]):
        self.only = only
        self.filters = filters
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_QUEUED)
        self.overflowed = False


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
        if subject is self.app:
            if event == "domain-add" and kwargs.get("vm") is not None:
                self._hook_vm(kwargs["vm"])
            elif event == "domain-delete" and kwargs.get("vm") is not None:
                vm = kwargs["vm"]
                if id(vm) in self._hooked:
                    vm.remove_handler("*", self._on_event)
                    self._hooked.discard(id(vm))
            name = ""
        else:
            name = _text(subject)
        record = None
        for subscriber in list(self.subscribers):
            if subscriber.only is not None and name != subscriber.only:
                continue
            if subject is not self.app and not all(check(subject)
                                                   for check in subscriber.filters):
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


def broadcaster(server: Any) -> EventBroadcaster:
    found = getattr(server, "event_broadcaster", None)
    if found is None:
        found = server.event_broadcaster = EventBroadcaster(server.app)
    return found


@method("admin.Events", scope="global", read=True, dest="any")
async def events(call: ApiCall) -> bytes:
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
