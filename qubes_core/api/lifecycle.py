"""Power methods: Start, Shutdown, Kill, Pause, Unpause, Suspend, Resume, CurrentState,
and the ``admin.vm.Stats`` stream.

They call the VM's own ``start``/``shutdown``/``kill``/``pause``/``unpause``/
``suspend``/``resume`` (the model and the runtime decide what that means); none
of them changes qubes.xml, so they run without the write lock: a slow start does
not hold up other callers. Figures (memory, CPU time) are read from the runtime
each time, never kept.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from typing import TYPE_CHECKING, Any

from qubes_core import exc, protocol
from qubes_core.api.call import NO_REPLY, ApiCall, NoReply
from qubes_core.api.registry import method

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM

SHUTDOWN_OPTIONS = {"", "force", "wait", "force+wait", "wait+force"}


async def _invoke(vm: BaseVM, action: str, **kwargs: Any) -> None:
    func = getattr(vm, action, None)
    if func is None:
        raise exc.QubesVMError(vm, f"{vm} cannot {action}")
    params = inspect.signature(func).parameters
    accepted = {k: v for k, v in kwargs.items() if k in params}
    result = func(**accepted)
    if inspect.isawaitable(result):
        await result


@method("admin.vm.Start", scope="local", execute=True)
async def vm_start(call: ApiCall) -> None:
    """Start the VM (and its netvm first, as the model decides); returns once it runs."""
    await _invoke(call.dest, "start")


@method("admin.vm.Shutdown", scope="local", execute=True, argument=True,
        argument_optional=True)
async def vm_shutdown(call: ApiCall) -> None:
    """Ask the VM to shut down; ``force`` even if others use it as netvm, ``wait`` until off."""
    if call.arg not in SHUTDOWN_OPTIONS:
        raise exc.QubesValueError(
            f"invalid shutdown option {call.arg!r}: use force, wait or force+wait")
    options = set(call.arg.split("+")) if call.arg else set()
    await _invoke(call.dest, "shutdown", wait="wait" in options, force="force" in options)


@method("admin.vm.Kill", scope="local", execute=True)
async def vm_kill(call: ApiCall) -> None:
    """Stop the VM at once, without asking the system inside it."""
    await _invoke(call.dest, "kill")


@method("admin.vm.Pause", scope="local", execute=True)
async def vm_pause(call: ApiCall) -> None:
    """Freeze a running VM in memory."""
    await _invoke(call.dest, "pause")


@method("admin.vm.Unpause", scope="local", execute=True)
async def vm_unpause(call: ApiCall) -> None:
    """Let a paused VM run again."""
    await _invoke(call.dest, "unpause")


@method("admin.vm.Suspend", scope="local", execute=True)
async def vm_suspend(call: ApiCall) -> None:
    """Suspend the VM to memory; a runtime or system that cannot suspend pauses it."""
    await _invoke(call.dest, "suspend")


@method("admin.vm.Resume", scope="local", execute=True)
async def vm_resume(call: ApiCall) -> None:
    """Wake a suspended VM, or unpause a paused one."""
    await _invoke(call.dest, "resume")


@method("admin.vm.Console", scope="local", write=True)
async def vm_console(call: ApiCall) -> str:
    """The path of the running VM's console terminal, for dom0's console tool to open.

    A write, as in the reference: the console lets the caller type into the VM.
    """
    vm = call.dest
    call.require_not_dom0()
    if vm.get_power_state() == "Halted":
        raise exc.QubesVMNotRunningError(vm, f"{vm} has no console: it is not running")
    runtime = call.app.runtime
    tty = await asyncio.to_thread(runtime.console_tty, vm)
    if not tty:
        raise exc.QubesVMError(
            vm, f"{vm} has no console terminal in the {runtime.name} runtime "
                "(use qvm-run for a shell)")
    return tty


def _current_state(vm: BaseVM) -> str:
    """``mem=... mem_static_max=... cputime=... power_state=...`` of ``vm``, as the
    runtime says now."""
    state: dict[str, int | str] = {"mem": 0, "mem_static_max": 0, "cputime": 0,
                                   "power_state": vm.get_power_state()}
    figures = vm.app.runtime.current_state(vm)
    state.update({key: figures[key] for key in ("mem", "mem_static_max", "cputime")
                  if key in figures})
    return " ".join(f"{key}={value}" for key, value in state.items())


@method("admin.vm.CurrentState", scope="local", read=True)
async def vm_current_state(call: ApiCall) -> str:
    """The VM's power state and, where the runtime knows them, its memory and CPU time
    (read in a worker thread when the runtime's reads wait for another process)."""
    vm = call.dest
    if vm.app.runtime.slow_reads:
        return await asyncio.to_thread(_current_state, vm)
    return _current_state(vm)


def _stats_sweep(app: Qubes, vms: list[BaseVM], previous: dict[int, tuple[float, int]]
                 ) -> list[tuple[str, dict[str, str]]]:
    """``vm-stats`` of each running VM of ``vms``: what the runtime says now, with the
    CPU usage (percent of the host's CPUs) since the previous sweep (``previous``,
    updated here). Runs in a worker thread: the runtime's calls may block."""
    host_cpus = os.cpu_count() or 1
    records = []
    for vm in vms:
        if vm.qid == 0 or vm.get_power_state() == "Halted":
            previous.pop(vm.qid, None)
            continue
        figures = app.runtime.current_state(vm)
        now, cpu_ns = time.monotonic(), int(figures.get("cputime", 0))
        before = previous.get(vm.qid)
        previous[vm.qid] = (now, cpu_ns)
        usage = 0
        if before is not None and now > before[0]:
            usage = round(100 * (cpu_ns - before[1]) / 1e9 / (now - before[0]) / host_cpus)
        memory_kb = int(figures.get("mem", 0))
        records.append((vm.name, {
            "memory_kb": str(memory_kb),
            "memory_assigned_total": str(memory_kb),
            "memory_assigned_usable": str(memory_kb),
            "memory_with_swap_used": str(memory_kb),
            "cpu_time": str(cpu_ns // 1_000_000),
            "cpu_usage": str(max(0, min(100, usage))),
            "online_vcpus": str(int(figures.get("online_vcpus", 0))),
        }))
    return records


@method("admin.vm.Stats", scope="global", read=True, dest="any")
async def vm_stats(call: ApiCall) -> NoReply:
    """Stream ``vm-stats`` events (memory in KiB, CPU time in ms, CPU usage in percent,
    online vCPUs) of the running VMs (all for dom0, else the one named) every
    ``stats_interval`` seconds, until the client hangs up.

    The stream is in ``admin.Events``' format and starts with
    ``connection-established``. Memory figures are what the runtime gives the VM:
    qubesd has no view of the memory use inside it, so the ``memory_assigned_*``
    and ``memory_with_swap_used`` keys repeat ``memory_kb``.
    """
    connection = call.connection
    if connection is None:
        raise RuntimeError("admin.vm.Stats needs a connection to stream to")
    only = None if call.dest.qid == 0 else call.dest
    previous: dict[int, tuple[float, int]] = {}
    hangup = asyncio.ensure_future(connection.wait_hangup())
    try:
        await connection.send(protocol.encode_event("", "connection-established", {}))
        while not hangup.done():
            vms = [only] if only is not None else call.filter(list(call.app.domains))
            records = await asyncio.to_thread(_stats_sweep, call.app, vms, previous)
            for name, figures in records:
                await connection.send(protocol.encode_event(name, "vm-stats", figures))
            await asyncio.wait({hangup}, timeout=call.app.stats_interval)
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        hangup.cancel()
    return NO_REPLY
