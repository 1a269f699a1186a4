"""Starting and stopping a VM: the model's rules around its runtime.

The runtime (``vm.app.runtime``) does the work and reports what happened by
firing events on the VM; this mixin checks the rules first (state, netvm chain,
VMs that depend on a netvm), starts and stops the VM's storage, recreates its
QubesDB at start, and after a stop fires ``domain-shutdown`` and removes a
DispVM whose ``auto_cleanup`` is set.

Events fired here: ``domain-pre-start`` (async, vetoable), ``domain-qdb-create``,
``domain-start-failed`` (``reason``), ``domain-pre-shutdown`` (async, vetoable,
``force``), ``domain-shutdown`` (``reason``); on the app, ``save-request`` after
a DispVM was cleaned up. The runtime fires ``domain-start``,
``domain-stopped``, ``domain-paused`` and ``domain-unpaused``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from qubes_core import exc
from qubes_core.events import Emitter, handler
from qubes_core.qubesdb import InMemoryQubesDB

log = logging.getLogger("qubes.vm")

DEFAULT_SHUTDOWN_TIMEOUT = 60.0
RUNNING_STATES = ("Running", "Transient", "Paused", "Suspended")
DNS_SERVERS = ("10.139.1.1", "10.139.1.2")


class LifecycleMixin(Emitter):
    """``start``, ``shutdown``, ``kill``, ``pause`` and ``unpause`` of a VM that runs."""

    # --- helpers ----------------------------------------------------------------

    @property
    def startup_lock(self) -> asyncio.Lock:
        """Held while the VM starts, so that two starts do not race."""
        lock = self.__dict__.get("_startup_lock")
        if lock is None:
            lock = self.__dict__["_startup_lock"] = asyncio.Lock()
        return lock

    def _runtime(self, action: str) -> Any:
        runtime = self.app.runtime
        if not getattr(runtime, "runs_vms", True):
            raise exc.QubesVMError(
                self, f"cannot {action} {self}: this installation is opened without a "
                      f"runtime ({runtime.name}); run qubesd with --runtime xen, test or sandbox",
            )
        return runtime

    def _usable_storage(self) -> Any:
        """The VM's storage, or None (with a debug log) when a pool it needs is unusable."""
        storage = getattr(self, "storage", None)
        if storage is None:
            log.debug("%s has no storage; skipping it", self)
            return None
        for name, config in self.volume_config.items():
            if name == "kernel" and not config.get("vid"):
                continue  # no dom0 kernel: the VM boots its own
            pool = self.app.pools.get(config.get("pool"))
            if pool is None or not getattr(pool, "usable", True):
                log.debug("%s: pool %r of volume %s is not usable; skipping storage",
                          self, config.get("pool"), name)
                return None
        return storage

    # --- start --------------------------------------------------------------------

    async def start(self) -> LifecycleMixin:
        """Start the VM, after its netvm chain; its storage and QubesDB first."""
        runtime = self._runtime("start")
        async with self.startup_lock:
            state = self.get_power_state()
            if state != "Halted":
                raise exc.QubesVMNotHaltedError(self, f"cannot start {self}: it is {state}")
            started_storage = None
            try:
                await self.fire_event_async("domain-pre-start", pre_event=True)
                await self._start_netvm()
                storage = self._usable_storage()
                if storage is not None:
                    await storage.start()  # undoes itself if one volume fails
                    started_storage = storage
                self.create_qdb_entries()
                await runtime.start(self)
            except BaseException as error:
                await self._abort_start(started_storage, error)
                raise
        log.info("started %s", self)
        return self

    async def _start_if_halted(self) -> None:
        """Start the VM unless it runs (used for netvms, which several VMs share)."""
        state = self.get_power_state()
        if state in RUNNING_STATES:
            return
        if state != "Halted":
            raise exc.QubesVMError(self, f"{self} is {state}")
        try:
            await self.start()
        except exc.QubesVMNotHaltedError:
            pass  # another VM using this netvm started it meanwhile

    async def _start_netvm(self) -> None:
        netvm = getattr(self, "netvm", None)
        if netvm is None:
            return
        starter = getattr(netvm, "_start_if_halted", None)
        if starter is None:
            raise exc.QubesVMError(self, f"cannot start {self}: its netvm {netvm} cannot run")
        try:
            await starter()
        except exc.QubesException as error:
            raise exc.QubesVMError(
                self, f"cannot start {self}: its netvm {netvm} cannot start: {error}"
            ) from error

    async def _abort_start(self, storage: Any, error: BaseException) -> None:
        """Undo a failed start: started volumes as they were; a disposable VM removed."""
        if storage is not None:
            results = await asyncio.gather(
                *(volume.abort_start() for volume in storage.volumes.values()),
                return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("%s: undoing the start of a volume failed: %s", self, result)
        await self.fire_event_async("domain-start-failed", reason=str(error))
        if getattr(self, "auto_cleanup", False):
            await self._remove_disposable()

    def create_qdb_entries(self) -> None:
        """A fresh QubesDB with the VM's identity and network, then ``domain-qdb-create``."""
        self.qdb = InMemoryQubesDB()
        template = getattr(self, "template", None)
        self.qdb.write("/name", self.name)
        self.qdb.write("/type", type(self).__name__)
        self.qdb.write("/qubes-vm-type", type(self).__name__)
        self.qdb.write("/qubes-vm-updateable", str(template is None))
        self.qdb.write("/qubes-vm-persistence", _persistence(self))
        self.qdb.write("/qubes-base-template", template.name if template is not None else "")
        self.qdb.write("/qubes-debug-mode", "1" if self.debug else "0")
        if self.netvm is not None:
            self.qdb.write("/qubes-ip", self.ip or "")
            self.qdb.write("/qubes-netmask", "255.255.255.255")
            self.qdb.write("/qubes-gateway", self.netvm.ip or "")
            self.qdb.write("/qubes-primary-dns", DNS_SERVERS[0])
            self.qdb.write("/qubes-secondary-dns", DNS_SERVERS[1])
            self.qdb.write("/qubes-mac", self.mac)
        self.fire_event("domain-qdb-create")

    # --- stop ----------------------------------------------------------------------

    async def shutdown(self, force: bool = False, wait: bool = False,
                       timeout: float | None = None) -> LifecycleMixin:
        """Ask the VM to shut down; with ``wait``, return once it stopped.

        A netvm that running VMs use is not shut down unless ``force``.
        """
        runtime = self._runtime("shut down")
        state = self.get_power_state()
        if state == "Halted":
            raise exc.QubesVMNotStartedError(self, f"cannot shut down {self}: it is not running")
        if not force:
            users = sorted(vm.name for vm in self.connected_vms if vm.is_running())
            if users:
                raise exc.QubesVMInUseError(
                    self, f"cannot shut down {self}: running VMs use it as netvm: "
                          f"{', '.join(users)} (shut them down first, or force)",
                )
        await self.fire_event_async("domain-pre-shutdown", pre_event=True, force=force)
        if state == "Paused":
            await runtime.unpause(self)  # a paused VM cannot act on the request
        await runtime.shutdown(self)
        if wait:
            limit = DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else timeout
            if not await runtime.wait_stopped(self, limit):
                raise exc.QubesVMShutdownTimeoutError(
                    self, f"{self} did not shut down within {limit:g} s (kill it to stop it)")
        return self

    async def kill(self) -> LifecycleMixin:
        """Stop the VM at once; return once its stop was handled."""
        runtime = self._runtime("kill")
        if self.get_power_state() == "Halted":
            raise exc.QubesVMNotStartedError(self, f"cannot kill {self}: it is not running")
        await runtime.kill(self)
        return self

    async def pause(self) -> LifecycleMixin:
        runtime = self._runtime("pause")
        state = self.get_power_state()
        if state != "Running":
            raise exc.QubesVMNotRunningError(self, f"cannot pause {self}: it is {state}")
        await runtime.pause(self)
        return self

    async def unpause(self) -> LifecycleMixin:
        runtime = self._runtime("unpause")
        state = self.get_power_state()
        if state != "Paused":
            raise exc.QubesVMNotPausedError(self, f"cannot unpause {self}: it is {state}")
        await runtime.unpause(self)
        return self

    @handler("domain-stopped")
    async def _on_domain_stopped(self, event: str, reason: str | None = None,
                                 **kwargs: Any) -> None:
        """The runtime saw the VM stop: storage, then ``domain-shutdown``, then cleanup."""
        storage = self._usable_storage()
        if storage is not None:
            try:
                await storage.stop()
            except Exception as error:
                log.error("%s: stopping its storage failed: %s", self, error)
        log.info("%s stopped (%s)", self, reason)
        await self.fire_event_async("domain-shutdown", reason=reason)
        if getattr(self, "auto_cleanup", False):
            await self._remove_disposable()

    async def _remove_disposable(self) -> None:
        """Remove a DispVM with ``auto_cleanup``: its volumes, its entry; save qubes.xml."""
        app = self.app
        if app.domains.get(self.qid) is not self:
            return
        storage = self._usable_storage()
        if storage is not None:
            try:
                await storage.remove()
            except Exception as error:
                log.error("%s: removing its volumes failed: %s", self, error)
        try:
            del app.domains[self]
        except exc.QubesException as error:
            log.error("cannot remove disposable %s: %s", self, error)
            return
        log.info("removed disposable %s (auto_cleanup)", self)
        await save_app(app)


async def save_app(app: Any) -> None:
    """Persist a change made outside any API call.

    A handler of the app's ``save-request`` event that saved (qubesd, which
    serialises its saves) returns True; without one, qubes.xml is saved here.
    """
    if any(await app.fire_event_async("save-request")):
        return
    if app.store is not None:
        app.save()


def _persistence(vm: Any) -> str:
    """What survives a restart: everything, only /rw (template-based), or nothing."""
    if type(vm).__name__ == "DispVM":
        return "none"
    return "rw-only" if getattr(vm, "template", None) is not None else "full"
