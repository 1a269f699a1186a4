"""Starting and stopping a VM: the model's rules around its runtime.

The runtime (``vm.app.runtime``) does the work and reports what happened by
firing events on the VM; this mixin checks the rules first (state, netvm chain,
VMs that depend on a netvm), starts and stops the VM's storage, recreates its
QubesDB at start, and after a stop fires ``domain-shutdown`` and then lets the
class finish (:meth:`LifecycleMixin.after_run`: a DispVM with ``auto_cleanup``
removes itself, ``qubes_core.vm.dispvm``). It also creates and removes the VM on disk,
and removes a VM from the model: under the same startup lock as a start, so that
a VM is never removed half-way through its start nor started once removed.

Events fired here: ``domain-pre-start`` (async, vetoable), ``domain-qdb-create``,
``domain-start-failed`` (``reason``), ``domain-pre-shutdown`` (async, vetoable,
``force``), ``domain-shutdown`` (``reason``), ``domain-resumed``. The runtime fires
``domain-start``, ``domain-stopped``, ``domain-paused`` and ``domain-unpaused``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from qubes_core import exc
from qubes_core.events import handler
from qubes_core.qubesdb import InMemoryQubesDB
from qubes_core.vm import pending
from qubes_core.vm.base import BaseVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.backend import Runtime
    from qubes_core.storage.vmstorage import Storage
    from qubes_core.vm.qubesvm import QubesVM

log = logging.getLogger("qubes.vm")

DEFAULT_SHUTDOWN_TIMEOUT = 60.0
# How long a start waits for the handling of the VM's last stop to finish.
STOP_HANDLING_TIMEOUT = 30.0
RUNNING_STATES = ("Running", "Transient", "Paused", "Suspended")
DNS_SERVERS = ("10.139.1.1", "10.139.1.2")


class LifecycleMixin(BaseVM):
    """``start``, ``shutdown``, ``kill``, ``pause``/``unpause`` and ``suspend``/``resume``
    of a VM that runs."""

    if TYPE_CHECKING:
        # What the lifecycle reads of the VM beyond BaseVM: QubesVM and its
        # NetworkMixin declare them as properties.
        debug: bool
        netvm: LifecycleMixin | None
        ip: str | None
        mac: str

        @property
        def connected_vms(self) -> list[BaseVM]: ...

        @property
        def storage(self) -> Storage: ...

        @property
        def dir_path(self) -> Path: ...

    # --- helpers ----------------------------------------------------------------

    @property
    def startup_lock(self) -> asyncio.Lock:
        """Held while the VM starts, so that two starts do not race."""
        lock = self.__dict__.get("_startup_lock")
        if lock is None:
            lock = self.__dict__["_startup_lock"] = asyncio.Lock()
        return lock

    @property
    def _as_vm(self) -> QubesVM:
        """This VM as its runtime takes it: the mixin is only ever QubesVM's."""
        return cast("QubesVM", self)

    def _runtime(self, action: str) -> Runtime:
        runtime = self.app.runtime
        if not runtime.runs_vms:
            raise exc.QubesVMError(
                self, f"cannot {action} {self}: this installation is opened without a "
                      f"runtime ({runtime.name}); run qubesd with --runtime xen, test or sandbox",
            )
        return runtime

    def usable_storage(self) -> Storage | None:
        """The VM's storage, or None (with a debug log) when it has none or a pool it
        needs is unusable (a driver not installed): such a VM keeps its settings but
        its volumes are neither created, started nor removed."""
        try:
            storage = self.storage
        except exc.QubesException as error:
            log.debug("%s: its storage cannot be set up (%s); skipping it", self, error)
            return None
        if storage is None:
            log.debug("%s has no storage; skipping it", self)
            return None
        for name, config in self.volume_config.items():
            if name == "kernel" and not config.get("vid"):
                continue  # no dom0 kernel: the VM boots its own
            pool = self.app.pools.get(config.get("pool", ""))
            if pool is None or not pool.usable:
                log.debug("%s: pool %r of volume %s is not usable; skipping storage",
                          self, config.get("pool"), name)
                return None
        return storage

    @property
    def volumes_in_use(self) -> bool:
        """Whether this qubesd started the VM's volumes and has not yet stopped them.

        True from the start of its volumes until the stop of the VM has been handled
        (volumes committed, a disposable VM removed); until then the VM must neither
        be removed nor started again, even when the runtime already reports it halted.
        """
        return bool(self.__dict__.get("_volumes_in_use", False))

    def _set_volumes_in_use(self, value: bool) -> None:
        self.__dict__["_volumes_in_use"] = value

    def _require_in_model(self, action: str) -> None:
        """Refuse to act on a VM object that is no longer (this object) in the model."""
        if self.app.domains.get(self.qid) is not self:
            raise exc.QubesVMNotFoundError(self.name, f"cannot {action} {self}: it was removed")

    # --- start --------------------------------------------------------------------

    async def start(self) -> LifecycleMixin:
        """Start the VM, after its netvm chain; its storage and QubesDB first.

        Runs under :attr:`startup_lock`, which :meth:`remove` takes too: a VM is
        never removed half-way through its start, nor started once removed.
        """
        runtime = self._runtime("start")
        async with self.startup_lock:
            self._require_in_model("start")
            state = self.get_power_state()
            if state != "Halted":
                raise exc.QubesVMNotHaltedError(self, f"cannot start {self}: it is {state}")
            await self._wait_stop_handled(runtime)
            started_storage = None
            try:
                await self.fire_event_async("domain-pre-start", pre_event=True)
                await self._start_netvm()
                storage = self.usable_storage()
                if storage is not None:
                    self._set_volumes_in_use(True)
                    await storage.start()  # undoes itself if one volume fails
                    started_storage = storage
                self.create_qdb_entries()
                self._require_in_model("start")
                await runtime.start(self._as_vm)
            except BaseException as error:
                await self._abort_start(started_storage, error)
                raise
        log.info("started %s", self)
        return self

    async def _wait_stop_handled(self, runtime: Runtime) -> None:
        """A VM the runtime reports halted whose last stop is still being handled
        (its volumes not yet committed): wait for that, within a bound."""
        if not self.volumes_in_use:
            return
        await runtime.wait_stopped(self._as_vm, STOP_HANDLING_TIMEOUT)
        if self.volumes_in_use:
            raise exc.QubesVMNotHaltedError(
                self, f"cannot start {self}: its last stop is still being handled "
                      "(its volumes are in use); try again")
        self._require_in_model("start")  # a disposable VM is gone after its stop

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
        netvm = self.netvm
        if netvm is None:
            return
        if not isinstance(netvm, LifecycleMixin):
            raise exc.QubesVMError(self, f"cannot start {self}: its netvm {netvm} cannot run")
        try:
            await netvm._start_if_halted()
        except exc.QubesException as error:
            raise exc.QubesVMError(
                self, f"cannot start {self}: its netvm {netvm} cannot start: {error}"
            ) from error

    async def _abort_start(self, storage: Storage | None, error: BaseException) -> None:
        """Undo a failed start: started volumes as they were; a disposable VM removed."""
        if storage is not None:
            results = await asyncio.gather(
                *(volume.abort_start() for volume in storage.volumes.values()),
                return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("%s: undoing the start of a volume failed: %s", self, result)
        self._set_volumes_in_use(False)
        await self.fire_event_async("domain-start-failed", reason=str(error))
        await self.after_run()

    async def after_run(self) -> None:
        """What the class does once a run of the VM ended (its stop handled, after the
        handlers of ``domain-shutdown``; or its start failed): nothing here.

        It runs while the VM cannot start nor be removed (the startup lock is held,
        or its volumes are still in use).
        """

    def create_qdb_entries(self) -> None:
        """A fresh QubesDB with the VM's identity and network, then ``domain-qdb-create``."""
        self.qdb = InMemoryQubesDB()
        template = self.template
        self.qdb.write("/name", self.name)
        self.qdb.write("/type", type(self).__name__)
        self.qdb.write("/qubes-vm-type", type(self).__name__)
        self.qdb.write("/qubes-vm-updateable", str(template is None))
        self.qdb.write("/qubes-vm-persistence", self.persistence())
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
            await runtime.unpause(self._as_vm)  # a paused VM cannot act on the request
        await runtime.shutdown(self._as_vm)
        if wait:
            limit = DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else timeout
            if not await runtime.wait_stopped(self._as_vm, limit):
                raise exc.QubesVMShutdownTimeoutError(
                    self, f"{self} did not shut down within {limit:g} s (kill it to stop it)")
        return self

    async def kill(self) -> LifecycleMixin:
        """Stop the VM at once; return once its stop was handled."""
        runtime = self._runtime("kill")
        if self.get_power_state() == "Halted":
            raise exc.QubesVMNotStartedError(self, f"cannot kill {self}: it is not running")
        await runtime.kill(self._as_vm)
        return self

    async def pause(self) -> LifecycleMixin:
        runtime = self._runtime("pause")
        state = self.get_power_state()
        if state != "Running":
            raise exc.QubesVMNotRunningError(self, f"cannot pause {self}: it is {state}")
        await runtime.pause(self._as_vm)
        return self

    async def unpause(self) -> LifecycleMixin:
        runtime = self._runtime("unpause")
        state = self.get_power_state()
        if state != "Paused":
            raise exc.QubesVMNotPausedError(self, f"cannot unpause {self}: it is {state}")
        await runtime.unpause(self._as_vm)
        return self

    async def suspend(self) -> LifecycleMixin:
        """Suspend the VM to memory where its runtime can; elsewhere freeze it as
        :meth:`pause` does (a paused VM stays as it is)."""
        runtime = self._runtime("suspend")
        state = self.get_power_state()
        if state not in ("Running", "Paused"):
            raise exc.QubesVMNotRunningError(self, f"cannot suspend {self}: it is {state}")
        if state == "Running":
            await runtime.suspend(self._as_vm)
        return self

    async def resume(self) -> LifecycleMixin:
        """Wake a suspended VM (``domain-resumed``), or unpause a paused one."""
        runtime = self._runtime("resume")
        state = self.get_power_state()
        if state == "Suspended":
            await runtime.resume(self._as_vm)
            await self.fire_event_async("domain-resumed")
        elif state == "Paused":
            await runtime.unpause(self._as_vm)
        else:  # as Qubes: a resume of what is neither suspended nor paused is an unpause
            raise exc.QubesVMNotPausedError(
                self, f"cannot resume {self}: it is {state}, not suspended or paused")
        return self

    @handler("domain-stopped")
    async def _on_domain_stopped(self, event: str, reason: str | None = None,
                                 **kwargs: Any) -> None:
        """The runtime saw the VM stop: storage, then ``domain-shutdown``, then cleanup."""
        try:
            storage = self.usable_storage()
            if storage is not None:
                try:
                    await storage.stop()
                except Exception as error:
                    log.error("%s: stopping its storage failed: %s", self, error)
            log.info("%s stopped (%s)", self, reason)
            await self.fire_event_async("domain-shutdown", reason=reason)
            await self.after_run()
        finally:
            self._set_volumes_in_use(False)

    def persistence(self) -> str:
        """What of the VM survives a restart, as its QubesDB tells it: everything
        (``full``; ``rw-only`` on a template, ``none`` for a DispVM)."""
        return "full"

    # --- on disk ----------------------------------------------------------------------

    async def create_on_disk(self) -> None:
        """Create the VM's volumes (on failure, those created are removed again).

        They are noted first as a pending creation, which the next start of qubesd
        undoes unless qubes.xml recorded the VM (``qubes_core.vm.pending``).
        """
        storage = self.usable_storage()
        if storage is not None:
            await asyncio.to_thread(pending.record, self)
            await storage.create()
        elif self.volume_config:
            log.warning("%s: its storage is not usable; no volumes created", self)

    async def remove_from_disk(self) -> None:
        """Remove the VM's volumes and its own directory (``dir_path``)."""
        storage = self.usable_storage()
        if storage is not None:
            await storage.remove()
        directory = self.dir_path
        if (directory.is_dir()
                and self.app.base_dir in directory.parents):
            await asyncio.to_thread(shutil.rmtree, directory)

    async def remove(self) -> None:
        """Take the halted VM out of the model, then remove its files.

        Refused while the VM starts (its startup lock is held: waiting for it would
        hold up whoever called), runs, or its volumes are in use; the state is read
        with the startup lock held, and held until the files are gone, so that no
        start can begin on a VM being removed. Failing to remove files does not undo
        the removal (logged; the files are left for the admin).
        """
        if self.startup_lock.locked():
            raise exc.QubesVMNotHaltedError(self, f"cannot remove {self}: it is starting")
        async with self.startup_lock:
            self._require_in_model("remove")
            state = self.get_power_state()
            if state != "Halted":
                raise exc.QubesVMNotHaltedError(self, f"cannot remove {self}: it is {state}")
            if self.volumes_in_use:
                raise exc.QubesVMNotHaltedError(
                    self, f"cannot remove {self}: its volumes are in use (its stop is still "
                          "being handled); try again")
            del self.app.domains[self]
            await self.remove_files_of_removed()
        log.info("removed %s", self)

    async def remove_files_of_removed(self) -> None:
        """Remove the files of a VM already out of the model; a failure is logged."""
        try:
            await self.remove_from_disk()
        except Exception:
            # The VM is out of the model; leftover files must not undo that.
            log.exception("removing the files of %s failed; remove them by hand", self)


async def save_app(app: Qubes) -> None:
    """Persist a change made outside any API call.

    A handler of the app's ``save-request`` event that saved (qubesd, which
    serialises its saves) returns True; without one, qubes.xml is saved here.
    """
    if any(await app.fire_event_async("save-request")):
        return
    if app.store is not None:
        app.save()
