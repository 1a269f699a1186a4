"""The rules around starting and stopping, on libvirt's test driver."""

from __future__ import annotations

from typing import Any

import pytest

from qubes_core import exc


async def test_start_of_a_running_vm_is_refused(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    await work.start()
    with pytest.raises(exc.QubesVMNotHaltedError, match="cannot start work: it is Running"):
        await work.start()
    await work.pause()
    with pytest.raises(exc.QubesVMNotHaltedError, match="it is Paused"):
        await work.start()


async def test_stopping_a_halted_vm_is_refused(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    with pytest.raises(exc.QubesVMNotStartedError, match="cannot shut down work"):
        await work.shutdown()
    with pytest.raises(exc.QubesVMNotStartedError, match="cannot kill work"):
        await work.kill()
    with pytest.raises(exc.QubesVMNotRunningError, match="cannot pause work: it is Halted"):
        await work.pause()
    with pytest.raises(exc.QubesVMNotPausedError, match="cannot unpause work: it is Halted"):
        await work.unpause()


async def test_unpause_of_a_running_vm_is_refused(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    await work.start()
    with pytest.raises(exc.QubesVMNotPausedError, match="it is Running"):
        await work.unpause()
    await work.pause()
    with pytest.raises(exc.QubesVMNotRunningError, match="cannot pause work: it is Paused"):
        await work.pause()


async def test_dom0_cannot_be_started_or_killed(lifecycle_app: Any) -> None:
    dom0 = lifecycle_app.adminvm
    assert dom0.get_power_state() == "Running"
    with pytest.raises(exc.QubesVMError, match="dom0 cannot be started"):
        await dom0.start()
    with pytest.raises(exc.QubesVMError, match="dom0 cannot be killed"):
        await dom0.kill()


async def test_pre_start_veto_leaves_everything_halted(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]

    def veto(vm: Any, event: str, **kwargs: Any) -> None:
        raise exc.QubesValueError(f"{vm} may not start now")

    work.add_handler("domain-pre-start", veto)
    with pytest.raises(exc.QubesValueError, match="work may not start now"):
        await work.start()
    assert [vm.name for vm in lifecycle_app.domains if vm.get_power_state() != "Halted"] == [
        "dom0"]
    assert not work.volumes["private"].is_dirty()


async def test_netvm_in_use_is_not_shut_down_unless_forced(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    firewall = lifecycle_app.domains["sys-firewall"]
    net = lifecycle_app.domains["sys-net"]
    await work.start()
    with pytest.raises(exc.QubesVMInUseError,
                       match=r"cannot shut down sys-net: running VMs use it as netvm: "
                             r"sys-firewall"):
        await net.shutdown()
    with pytest.raises(exc.QubesVMInUseError, match="sys-firewall: .*: work"):
        await firewall.shutdown(wait=True)
    assert firewall.get_power_state() == "Running"
    await work.shutdown(wait=True)
    await firewall.shutdown(wait=True)
    assert firewall.get_power_state() == "Halted"
    await net.shutdown(force=True, wait=True)
    assert net.get_power_state() == "Halted"


async def test_forced_shutdown_of_a_netvm_in_use(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    firewall = lifecycle_app.domains["sys-firewall"]
    await work.start()
    await firewall.shutdown(force=True, wait=True)
    assert firewall.get_power_state() == "Halted"
    assert work.get_power_state() == "Running"


async def test_pre_shutdown_veto_keeps_the_vm_running(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    await work.start()

    def veto(vm: Any, event: str, force: bool = False, **kwargs: Any) -> None:
        if not force:
            raise exc.QubesVMError(vm, "busy")

    work.add_handler("domain-pre-shutdown", veto)
    with pytest.raises(exc.QubesVMError, match="busy"):
        await work.shutdown(wait=True)
    assert work.get_power_state() == "Running"
    await work.shutdown(force=True, wait=True)
    assert work.get_power_state() == "Halted"


async def test_paused_vm_is_unpaused_to_shut_down(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    await work.start()
    await work.pause()
    await work.shutdown(wait=True)
    assert work.get_power_state() == "Halted"
