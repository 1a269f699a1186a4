"""The libvirt runtime: Xen through ``xen:///`` on Qubes, the test driver elsewhere.

Power state and start time are read from libvirt on every call. The start time
is kept in the running domain's live metadata, which libvirt drops when the
domain stops. Lifecycle events come through libvirt's callbacks on the asyncio
loop (:mod:`qubes_core.backend.libvirt_events`) and are delivered, in order, by
one task on the loop that last used this runtime. Domains whose UUID is not
one of a bound app's VMs (libvirt's own ``test`` domain, say) are ignored.

All connections to ``test:///default`` in one process share one state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import threading
import time
import uuid as uuidlib
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import libvirt
from lxml import etree

from qubes_core import exc
from qubes_core.backend import Runtime
from qubes_core.backend.domain_xml import render_domain_xml
from qubes_core.backend.libvirt_events import (
    PAUSED,
    STARTED,
    STOPPED,
    UNPAUSED,
    bind_event_loop,
    lifecycle_kind,
)

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM
    from qubes_core.vm.qubesvm import QubesVM

log = logging.getLogger("qubes.backend.libvirt")

START_TIME_NS = "https://www.qubes-os.org/libvirt/start-time"
DEFAULT_EVENT_TIMEOUT = 10.0

POWER_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "Halted",
    libvirt.VIR_DOMAIN_RUNNING: "Running",
    libvirt.VIR_DOMAIN_BLOCKED: "Running",
    libvirt.VIR_DOMAIN_PAUSED: "Paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "Halting",
    libvirt.VIR_DOMAIN_SHUTOFF: "Halted",
    libvirt.VIR_DOMAIN_CRASHED: "Crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "Suspended",
}

MODEL_EVENTS = {
    STARTED: "domain-start",
    STOPPED: "domain-stopped",
    PAUSED: "domain-paused",
    UNPAUSED: "domain-unpaused",
}


@dataclass
class _Delivery:
    """Where libvirt events go: a queue on one asyncio loop, drained by one task."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, str, str | None]]
    task: asyncio.Task[None]


def _message(error: libvirt.libvirtError) -> str:
    return error.get_error_message() or str(error)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _is_missing(error: libvirt.libvirtError) -> bool:
    return error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def _xenstore_read(path: str) -> str | None:
    """One XenStore value through ``xenstore-read`` (dom0 of Xen only); None if absent."""
    try:
        result = subprocess.run(["xenstore-read", path], capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


class LibvirtRuntime(Runtime):
    """VMs as libvirt domains of the connection at ``uri``."""

    slow_reads = True

    def __init__(self, uri: str, *, name: str | None = None,
                 event_timeout: float = DEFAULT_EVENT_TIMEOUT):
        self.uri = uri
        self.flavour = "test" if uri.startswith("test:") else "xen"
        self.name = name or self.flavour
        self.event_timeout = event_timeout
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._conn_lock = threading.Lock()
        self._apps: list[weakref.ref[Qubes]] = []
        self._delivery: _Delivery | None = None
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = defaultdict(list)
        # Last kind of event reported per domain, and the events we reported ourselves
        # because libvirt's were late: the late one is then not reported again.
        self._announced: dict[str, str] = {}
        self._synthesized: set[tuple[str, str]] = set()
        # Events whose handlers are running now, by domain.
        self._handling: dict[str, str] = {}
        # Starts in progress: their STARTED event waits until the start time is recorded.
        self._starting: dict[str, asyncio.Event] = {}
        self._max_vcpus: int | None = None

    def __repr__(self) -> str:
        return f"<LibvirtRuntime {self.uri}>"

    # --- connection -----------------------------------------------------------

    def connection(self) -> libvirt.virConnect:
        """The libvirt connection, opened on first use. Opened in a running loop, it has
        the lifecycle callback; one opened outside (a synchronous caller) is opened
        again with it when first used in a loop, since libvirt delivers events only to
        connections opened after its event implementation was registered."""
        loop = _running_loop()
        stale = None
        with self._conn_lock:
            if self._conn is not None and loop is not None and self._callback_id is None:
                stale, self._conn = self._conn, None
        if stale is not None:
            self._close_connection(stale, None)
        if loop is not None:
            bind_event_loop(loop)
        with self._conn_lock:
            if self._conn is None:
                try:
                    conn = libvirt.open(self.uri)
                except libvirt.libvirtError as error:
                    raise exc.QubesException(
                        f"cannot connect to libvirt at {self.uri}: {_message(error)} (on a "
                        "machine without Xen use the test runtime)"
                    ) from None
                if loop is not None:
                    self._callback_id = conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
                    # In-process drivers (test:///) have no connection to lose.
                    with contextlib.suppress(libvirt.libvirtError):
                        conn.registerCloseCallback(self._on_connection_closed, None)
                self._conn = conn
            return self._conn

    def _close_connection(self, conn: libvirt.virConnect, callback_id: int | None) -> None:
        try:
            if callback_id is not None:
                conn.domainEventDeregisterAny(callback_id)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            conn.close()
        except libvirt.libvirtError as error:
            log.warning("closing libvirt connection %s: %s", self.uri, _message(error))

    def _on_connection_closed(self, conn: Any, reason: int, opaque: Any) -> None:
        """libvirtd went away (restart, upgrade): reconnect on the next call."""
        log.warning("lost the libvirt connection to %s (reason %d); reconnecting on next use",
                    self.uri, reason)
        with self._conn_lock:
            if self._conn is conn:
                self._conn = None
                self._callback_id = None

    def close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
            callback_id, self._callback_id = self._callback_id, None
        if conn is not None:
            self._close_connection(conn, callback_id)
        for app in self._bound_apps():
            app.remove_handler("domain-delete", self._on_domain_delete)
        self._apps.clear()
        delivery, self._delivery = self._delivery, None
        if delivery is not None and not delivery.loop.is_closed():
            delivery.loop.call_soon_threadsafe(delivery.task.cancel)

    # --- apps whose VMs this runtime reports on --------------------------------

    def _bound_apps(self) -> list[Qubes]:
        return [app for app in (ref() for ref in self._apps) if app is not None]

    def bind(self, app: Qubes) -> None:
        if not any(bound is app for bound in self._bound_apps()):
            self._apps = [ref for ref in self._apps if ref() is not None]
            self._apps.append(weakref.ref(app))
            app.add_handler("domain-delete", self._on_domain_delete)
        self.connection()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._bind_loop()

    def _find_vm(self, domain_uuid: str) -> BaseVM | None:
        key = uuidlib.UUID(domain_uuid)
        for app in reversed(self._bound_apps()):  # the app bound last wins
            vm = app.domains.get(key)
            if vm is not None:
                return vm
        return None

    def _on_domain_delete(self, app: Qubes, event: str, vm: BaseVM, **kwargs: Any) -> None:
        """A VM left the model: its libvirt domain goes too (unless it still runs)."""
        domain = self._lookup(vm)
        if domain is None:
            return
        if domain.isActive():
            log.warning("%s was removed while its domain runs; leaving the domain defined", vm)
            return
        try:
            domain.undefine()
            log.info("undefined the libvirt domain of removed VM %s", vm)
        except libvirt.libvirtError as error:
            if not _is_missing(error):
                log.warning("cannot undefine the domain of %s: %s", vm, _message(error))
        self._announced.pop(str(vm.uuid), None)

    # --- reading state -------------------------------------------------------------

    def _lookup(self, vm: BaseVM) -> libvirt.virDomain | None:
        conn = self.connection()
        try:
            if vm.uuid is not None:
                return conn.lookupByUUIDString(str(vm.uuid))
            return conn.lookupByName(vm.name)
        except libvirt.libvirtError as error:
            if _is_missing(error):
                return None
            raise exc.QubesVMError(vm, f"cannot look up {vm} in libvirt: {_message(error)}")

    def state(self, vm: BaseVM) -> str:
        domain = self._lookup(vm)
        if domain is None:
            return "Halted"
        try:
            state, _reason = domain.state()
        except libvirt.libvirtError as error:
            if _is_missing(error):
                return "Halted"
            raise exc.QubesVMError(vm, f"cannot read the state of {vm}: {_message(error)}")
        return POWER_STATES.get(state, "Halted")

    async def power_states(self, vms: Iterable[BaseVM]) -> dict[int, str]:
        """Every domain's state read at once in a worker thread (libvirtd answers each
        read); dom0, which is no domain, answers itself."""
        vms = list(vms)
        by_uuid, by_name = await asyncio.to_thread(self._domain_states)
        return {vm.qid: vm.get_power_state() if vm.qid == 0
                else by_uuid.get(str(vm.uuid), "Halted") if vm.uuid is not None
                else by_name.get(vm.name, "Halted") for vm in vms}

    def _domain_states(self) -> tuple[dict[str, str], dict[str, str]]:
        """The state of every libvirt domain, by its uuid and by its name (as
        :meth:`state` finds a VM's domain)."""
        by_uuid: dict[str, str] = {}
        by_name: dict[str, str] = {}
        for domain in self.connection().listAllDomains():
            try:
                state = POWER_STATES.get(domain.state()[0], "Halted")
                by_uuid[domain.UUIDString()] = state
                by_name[domain.name()] = state
            except libvirt.libvirtError as error:
                if not _is_missing(error):  # one undefined meanwhile is halted
                    raise exc.QubesException(
                        f"cannot read the state of the libvirt domains: {_message(error)}")
        return by_uuid, by_name

    def xid(self, vm: BaseVM) -> int:
        domain = self._lookup(vm)
        try:
            return domain.ID() if domain is not None and domain.isActive() else -1
        except libvirt.libvirtError:
            return -1

    def stubdom_xid(self, vm: BaseVM) -> int:
        """Read from XenStore on Xen (``image/device-model-domid``); -1 elsewhere."""
        xid = self.xid(vm)
        if self.flavour != "xen" or xid < 0:
            return -1
        text = _xenstore_read(f"/local/domain/{xid}/image/device-model-domid")
        return int(text) if text is not None and text.isascii() and text.isdigit() else -1

    def stubdom_uuid(self, vm: BaseVM) -> str:
        stubdom = self.stubdom_xid(vm)
        if stubdom < 0:
            return ""
        text = _xenstore_read(f"/local/domain/{stubdom}/vm") or ""
        return text[4:] if re.match(r"^/vm/[0-9a-f-]{36}$", text) else ""

    def max_vcpus(self) -> int | None:
        """What the hypervisor reports (asked once): a larger count is refused at Set, not
        left for the start to fail on (the test driver would try to allocate it)."""
        if self._max_vcpus is None:
            try:
                self._max_vcpus = int(self.connection().getMaxVcpus(None))
            except libvirt.libvirtError:
                return None
        return self._max_vcpus

    def console_tty(self, vm: BaseVM) -> str:
        """The pty libvirt gave the domain's console (none on the test driver)."""
        domain = self._lookup(vm)
        try:
            if domain is None or not domain.isActive():
                return ""
            description = etree.fromstring(domain.XMLDesc(0).encode())
        except libvirt.libvirtError:
            return ""
        return str(description.xpath("string(/domain/devices/console/@tty)"))

    def start_time(self, vm: BaseVM) -> float | None:
        domain = self._lookup(vm)
        if domain is None:
            return None
        try:
            if not domain.isActive():
                return None
            text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, START_TIME_NS,
                                   libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError:
            return None
        value = etree.fromstring(text).get("time")
        return float(value) if value else None

    def current_state(self, vm: BaseVM) -> dict[str, int]:
        domain = self._lookup(vm)
        try:
            if domain is None or not domain.isActive():
                return super().current_state(vm)
            _state, max_kib, kib, vcpus, cputime = domain.info()
        except libvirt.libvirtError:
            return super().current_state(vm)
        return {"mem": kib, "mem_static_max": max_kib, "cputime": cputime,
                "online_vcpus": vcpus}

    # --- lifecycle -----------------------------------------------------------------

    @staticmethod
    def _uuid(vm: BaseVM) -> str:
        if vm.uuid is None:
            raise exc.QubesVMError(vm, f"{vm} has no uuid; libvirt needs one to run it")
        return str(vm.uuid)

    def _prepare(self, vm: QubesVM) -> str:
        self.bind(vm.app)
        self._bind_loop()
        return self._uuid(vm)

    async def start(self, vm: QubesVM) -> None:
        domain_uuid = self._prepare(vm)
        if await asyncio.to_thread(self.state, vm) != "Halted":
            raise exc.QubesVMNotHaltedError(vm, f"cannot start {vm}: it is not halted")
        # A stop that libvirt already made but that is still on its way to the model
        # is reported first, so that handlers see stop and start in order.
        await self.wait_stopped(vm, self.event_timeout)
        xml = render_domain_xml(vm, self.flavour)
        waiter = self._expect(domain_uuid, STARTED)
        gate = self._starting[domain_uuid] = asyncio.Event()
        try:
            await asyncio.to_thread(self._define_and_create, vm, xml)
        except BaseException:
            self._forget_waiter(domain_uuid, STARTED, waiter)
            raise
        finally:
            gate.set()
            self._starting.pop(domain_uuid, None)
        await self._settle(vm, domain_uuid, waiter, STARTED, None)

    def _define_and_create(self, vm: QubesVM, xml: str) -> None:
        """Define the domain from fresh XML and start it (in a worker thread)."""
        conn = self.connection()
        self._clear_stale_name(conn, vm)
        try:
            domain = conn.defineXML(xml)
        except libvirt.libvirtError as error:
            raise exc.QubesVMError(vm, f"libvirt refused the domain of {vm}: {_message(error)}")
        started = time.time()
        try:
            domain.create()
        except libvirt.libvirtError as error:
            raise exc.QubesVMError(vm, f"cannot start {vm}: {_message(error)}")
        try:
            domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                               f'<start time="{started!r}"/>', "start", START_TIME_NS,
                               libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as error:
            log.warning("cannot record the start time of %s: %s", vm, _message(error))
        log.info("started domain %s (%s)", vm, self.uri)

    @staticmethod
    def _clear_stale_name(conn: libvirt.virConnect, vm: BaseVM) -> None:
        """Undefine a halted domain of the same name left by a VM that no longer exists."""
        try:
            other = conn.lookupByName(vm.name)
        except libvirt.libvirtError as error:
            if _is_missing(error):
                return
            raise
        if other.UUIDString() == str(vm.uuid):
            return
        if other.isActive():
            raise exc.QubesVMError(
                vm, f"cannot start {vm}: another libvirt domain named {vm.name!r} "
                    f"(uuid {other.UUIDString()}) is running; stop it first",
            )
        log.info("undefining stale libvirt domain %s (uuid %s)", vm.name, other.UUIDString())
        other.undefine()

    def _active_domain(self, vm: QubesVM, action: str) -> libvirt.virDomain:
        domain = self._lookup(vm)
        if domain is None or not domain.isActive():
            raise exc.QubesVMNotStartedError(vm, f"cannot {action} {vm}: it is not running")
        return domain

    async def _call(self, vm: QubesVM, action: str, method: str) -> None:
        """Run ``domain.method()`` of the running ``vm`` in a worker thread."""
        def call() -> None:
            domain = self._active_domain(vm, action)
            try:
                getattr(domain, method)()
            except libvirt.libvirtError as error:
                raise exc.QubesVMError(vm, f"cannot {action} {vm}: {_message(error)}")

        await asyncio.to_thread(call)

    async def _change(self, vm: QubesVM, action: str, method: str, kind: str,
                      reason: str | None) -> None:
        """Ask libvirt for a change and return once its event was handled."""
        domain_uuid = self._prepare(vm)
        waiter = self._expect(domain_uuid, kind)
        try:
            await self._call(vm, action, method)
        except BaseException:
            self._forget_waiter(domain_uuid, kind, waiter)
            raise
        await self._settle(vm, domain_uuid, waiter, kind, reason)

    async def shutdown(self, vm: QubesVM) -> None:
        self._prepare(vm)
        await self._call(vm, "shut down", "shutdown")

    async def kill(self, vm: QubesVM) -> None:
        await self._change(vm, "kill", "destroy", STOPPED, "destroyed")

    async def pause(self, vm: QubesVM) -> None:
        await self._change(vm, "pause", "suspend", PAUSED, None)

    async def unpause(self, vm: QubesVM) -> None:
        await self._change(vm, "unpause", "resume", UNPAUSED, None)

    async def suspend(self, vm: QubesVM) -> None:
        """Suspend to memory (S3); a driver or guest that cannot is paused instead, as
        Qubes does."""
        def call() -> bool:
            domain = self._active_domain(vm, "suspend")
            try:
                domain.pMSuspendForDuration(libvirt.VIR_NODE_SUSPEND_TARGET_MEM, 0, 0)
            except libvirt.libvirtError as error:
                if error.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT,
                                              libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
                    return False
                raise exc.QubesVMError(vm, f"cannot suspend {vm}: {_message(error)}")
            return True

        if not await asyncio.to_thread(call):
            await self.pause(vm)

    async def resume(self, vm: QubesVM) -> None:
        await self._call(vm, "resume", "pMWakeup")

    async def wait_stopped(self, vm: QubesVM, timeout: float) -> bool:
        domain_uuid = self._prepare(vm)
        # The state is read in a worker thread first; what the events said is read after,
        # with no await before the decision.
        state = None
        if self._announced.get(domain_uuid) is None:
            state = await asyncio.to_thread(self.state, vm)
        last = self._announced.get(domain_uuid)
        if self._handling.get(domain_uuid) != STOPPED and (
                last == STOPPED or (last is None and state == "Halted")):
            return True
        waiter = self._expect(domain_uuid, STOPPED)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except TimeoutError:
            self._forget_waiter(domain_uuid, STOPPED, waiter)
        if await asyncio.to_thread(self.state, vm) == "Halted":
            await self._deliver(domain_uuid, STOPPED, "unknown", synthesized=True)
            return True
        return False

    # --- events ----------------------------------------------------------------------

    def _bind_loop(self) -> None:
        """Deliver events on the running loop (a new loop replaces an old one)."""
        loop = asyncio.get_running_loop()
        delivery = self._delivery
        if delivery is not None and delivery.loop is loop:
            return
        queue: asyncio.Queue[tuple[str, str, str | None]] = asyncio.Queue()
        task = loop.create_task(self._drain(queue), name=f"libvirt events {self.uri}")
        self._delivery = _Delivery(loop, queue, task)
        self._waiters.clear()
        self._starting.clear()

    def _on_lifecycle(self, conn: libvirt.virConnect, domain: libvirt.virDomain, event: int,
                      detail: int, opaque: Any) -> None:
        """libvirt's callback, on the loop libvirt's events run on: queue the event for
        the delivering task (of this loop, unless the runtime moved to another since)."""
        kind = lifecycle_kind(event, detail)
        delivery = self._delivery
        if kind is None or delivery is None:
            return
        item = (domain.UUIDString(), kind[0], kind[1])
        try:
            delivery.loop.call_soon_threadsafe(delivery.queue.put_nowait, item)
        except RuntimeError:  # that loop is closed: nobody to tell
            pass

    async def _drain(self, queue: asyncio.Queue[tuple[str, str, str | None]]) -> None:
        while True:
            domain_uuid, kind, reason = await queue.get()
            try:
                await self._deliver(domain_uuid, kind, reason)
            except Exception:
                log.exception("handling libvirt event %s of domain %s", kind, domain_uuid)

    async def _deliver(self, domain_uuid: str, kind: str, reason: str | None,
                       synthesized: bool = False) -> None:
        """Fire the model event of ``kind`` on the VM of ``domain_uuid``, then wake waiters."""
        gate = self._starting.get(domain_uuid) if kind == STARTED else None
        if gate is not None:
            await gate.wait()
        self._handling[domain_uuid] = kind
        try:
            if not synthesized and (domain_uuid, kind) in self._synthesized:
                self._synthesized.discard((domain_uuid, kind))
                return
            # libvirt reports in order: once another kind of event came, a late one of
            # the kind we reported ourselves will not come any more.
            self._synthesized = {key for key in self._synthesized if key[0] != domain_uuid}
            if synthesized:
                self._synthesized.add((domain_uuid, kind))
            vm = self._find_vm(domain_uuid)
            if vm is None:
                return
            log.debug("%s: %s (%s)", vm, MODEL_EVENTS[kind], reason)
            kwargs: dict[str, Any] = {"reason": reason} if kind == STOPPED else {}
            try:
                await vm.fire_event_async(MODEL_EVENTS[kind], **kwargs)
            except Exception:
                log.exception("handler of %s of %s failed", MODEL_EVENTS[kind], vm)
        finally:
            # Only now: whoever waits for this change sees it with its handlers done.
            self._announced[domain_uuid] = kind
            self._handling.pop(domain_uuid, None)
            self._resolve(domain_uuid, kind)

    def _expect(self, domain_uuid: str, kind: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[(domain_uuid, kind)].append(future)
        return future

    def _forget_waiter(self, domain_uuid: str, kind: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get((domain_uuid, kind), [])
        if future in waiters:
            waiters.remove(future)
        future.cancel()

    def _resolve(self, domain_uuid: str, kind: str) -> None:
        for future in self._waiters.pop((domain_uuid, kind), []):
            if not future.done():
                future.set_result(None)

    async def _settle(self, vm: QubesVM, domain_uuid: str, waiter: asyncio.Future[None],
                      kind: str, reason: str | None) -> None:
        """Wait for the event of a change we asked for; report it ourselves if it is late."""
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.event_timeout)
        except TimeoutError:
            log.warning("no %s event from libvirt for %s within %.0f s; reporting it anyway",
                        kind, vm, self.event_timeout)
            self._forget_waiter(domain_uuid, kind, waiter)
            await self._deliver(domain_uuid, kind, reason, synthesized=True)
