"""Runtimes: what actually runs VMs (libvirt with Xen or its test driver, the sandbox).

The model asks its runtime for a VM's power state and start time and never
caches them; a listing asks for the states of all its VMs at once
(:meth:`Runtime.power_states`), which a runtime whose reads wait for another
process (libvirt) answers from a worker thread, so that the loop stays free.
:class:`OfflineRuntime` is the runtime of a qubes.xml edited with no hypervisor
at hand (installation, recovery, unit tests): nothing runs.

Contract of a runtime that runs VMs: its ``start``/``shutdown``/``kill``/
``pause``/``unpause``/``suspend``/``resume`` ask the hypervisor for the change;
what actually happened is reported back by firing events on the VM, from the asyncio loop's thread:
``domain-start``, ``domain-stopped`` (``reason=``; the model then stops the
storage and fires ``domain-shutdown`` with the same reason), ``domain-paused``
and ``domain-unpaused``. ``start``, ``kill``, ``pause`` and ``unpause`` return
once their event was handled; ``shutdown`` only asks the VM to stop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from qubes_core import exc

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM
    from qubes_core.vm.qubesvm import QubesVM

RUNTIME_NAMES = ("offline", "test", "xen", "sandbox")


class Runtime:
    """Interface of a runtime, as the model sees it."""

    name = "abstract"
    runs_vms = True
    #: Whether a read (a state, an xid, a start time) waits for another process
    #: (libvirtd): the Admin API then reads in a worker thread.
    slow_reads = False

    def state(self, vm: BaseVM) -> str:
        """Power state of ``vm``: one of ``qubes_core.vm.base.POWER_STATES``."""
        raise NotImplementedError

    def start_time(self, vm: BaseVM) -> float | None:
        """When ``vm`` was started (seconds since the epoch); None unless it runs."""
        raise NotImplementedError

    async def power_states(self, vms: Iterable[BaseVM]) -> dict[int, str]:
        """The power state of each of ``vms`` (dom0's included) by qid, for a listing.

        Here each VM's own :meth:`state`: a runtime whose reads are quick (they ask
        no other process) answers on the loop.
        """
        return {vm.qid: vm.get_power_state() for vm in vms}

    def xid(self, vm: BaseVM) -> int:
        """Hypervisor id of the running ``vm``; -1 when the runtime has none for it."""
        return -1

    def stubdom_xid(self, vm: BaseVM) -> int:
        """Hypervisor id of the device model stub domain of the running HVM ``vm``; -1 if
        there is none (only Xen runs stub domains)."""
        return -1

    def stubdom_uuid(self, vm: BaseVM) -> str:
        """UUID of the stub domain of ``vm``; empty if there is none."""
        return ""

    def max_vcpus(self) -> int | None:
        """The most virtual CPUs a VM may have here; None where the runtime sets none."""
        return None

    def console_tty(self, vm: BaseVM) -> str:
        """Path of the running ``vm``'s console terminal; empty where it has none."""
        return ""

    async def start(self, vm: QubesVM) -> None:
        """Start ``vm`` (its storage is already started); return once it runs."""
        raise NotImplementedError

    async def shutdown(self, vm: QubesVM) -> None:
        """Ask ``vm`` to shut down cleanly; do not wait for it."""
        raise NotImplementedError

    async def kill(self, vm: QubesVM) -> None:
        """Stop ``vm`` at once; return once its stop was reported."""
        raise NotImplementedError

    async def pause(self, vm: QubesVM) -> None:
        raise NotImplementedError

    async def unpause(self, vm: QubesVM) -> None:
        raise NotImplementedError

    async def suspend(self, vm: QubesVM) -> None:
        """Suspend the running ``vm`` to memory (power state ``Suspended``) where the
        hypervisor and the system inside can; elsewhere freeze it as :meth:`pause` does."""
        await self.pause(vm)

    async def resume(self, vm: QubesVM) -> None:
        """Wake the suspended ``vm`` (only called while its state is ``Suspended``)."""
        raise exc.QubesVMError(vm, f"cannot resume {vm}: the {self.name} runtime never "
                                   "suspends to memory")

    async def wait_stopped(self, vm: QubesVM, timeout: float) -> bool:
        """Wait until the stop of ``vm`` was reported; False if ``timeout`` passed first."""
        raise NotImplementedError

    def current_state(self, vm: BaseVM) -> dict[str, int]:
        """Memory (KiB: ``mem``, ``mem_static_max``), ``cputime`` (ns) and, while it runs,
        ``online_vcpus`` of ``vm``."""
        return {"mem": 0, "mem_static_max": 0, "cputime": 0}

    def bind(self, app: Qubes) -> None:
        """Report events of ``app``'s VMs (also those started before this process)."""

    def close(self) -> None:
        """Release the connection to the hypervisor."""


class OfflineRuntime(Runtime):
    """No hypervisor: every VM but dom0 is halted."""

    name = "offline"
    runs_vms = False

    def state(self, vm: BaseVM) -> str:
        return "Halted"

    def start_time(self, vm: BaseVM) -> float | None:
        return None

    def _refuse(self, vm: QubesVM, action: str) -> exc.QubesVMError:
        return exc.QubesVMError(
            vm, f"cannot {action} {vm}: this installation is opened without a runtime "
                "(offline); run qubesd with --runtime xen, test or sandbox",
        )

    async def start(self, vm: QubesVM) -> None:
        raise self._refuse(vm, "start")

    async def shutdown(self, vm: QubesVM) -> None:
        raise self._refuse(vm, "shut down")

    async def kill(self, vm: QubesVM) -> None:
        raise self._refuse(vm, "kill")

    async def pause(self, vm: QubesVM) -> None:
        raise self._refuse(vm, "pause")

    async def unpause(self, vm: QubesVM) -> None:
        raise self._refuse(vm, "unpause")

    async def wait_stopped(self, vm: QubesVM, timeout: float) -> bool:
        return True


def default_runtime_name() -> str:
    """``xen`` on a Xen host (``/proc/xen`` exists), else libvirt's ``test`` driver."""
    return "xen" if os.path.exists("/proc/xen") else "test"


def make_runtime(name: str, **options: Any) -> Runtime:
    """The runtime called ``name`` (``offline``, ``test``, ``xen`` or ``sandbox``).

    ``test`` is libvirt's in-process test driver (``test:///default``), ``xen``
    libvirt's Xen driver (``xen:///``); ``uri=`` overrides the libvirt URI.
    """
    if name == "offline":
        if options:
            raise exc.QubesValueError(
                f"the offline runtime takes no options (got {', '.join(sorted(options))})"
            )
        return OfflineRuntime()
    if name in ("test", "xen"):
        from qubes_core.backend.libvirt import LibvirtRuntime

        uri = options.pop("uri", "test:///default" if name == "test" else "xen:///")
        return LibvirtRuntime(uri, name=name, **options)
    if name == "sandbox":
        from qubes_core.backend.sandbox import SandboxRuntime

        return SandboxRuntime(**options)
    raise exc.QubesValueError(
        f"no such runtime: {name!r} (known: {', '.join(RUNTIME_NAMES)})"
    )
