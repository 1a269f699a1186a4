"""Power methods: Start, Shutdown, Kill, Pause, Unpause, CurrentState.

They call the VM's own ``start``/``shutdown``/``kill``/``pause``/``unpause``
(the model and the runtime decide what that means); none of them changes
qubes.xml, so they run without the write lock: a slow start does not hold up
other callers.
"""

from __future__ import annotations

import inspect
from typing import Any

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method

SHUTDOWN_OPTIONS = {"", "force", "wait", "force+wait", "wait+force"}


async def _invoke(vm: Any, action: str, **kwargs: Any) -> None:
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


@method("admin.vm.CurrentState", scope="local", read=True)
async def vm_current_state(call: ApiCall) -> str:
    """The VM's power state and, where the runtime knows them, its memory and CPU time."""
    vm = call.dest
    state = {"mem": 0, "mem_static_max": 0, "cputime": 0,
             "power_state": vm.get_power_state()}
    state.update(vm.app.runtime.current_state(vm))
    return " ".join(f"{key}={value}" for key, value in state.items())
