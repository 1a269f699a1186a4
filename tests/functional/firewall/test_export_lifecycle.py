"""Export driven by the real lifecycle: VMs started and stopped on libvirt's test driver.

The VMs run as libvirt test-driver domains (no hypervisor here); the model, the
file-reflink storage, the lifecycle events and the QubesDB stores are the real ones.
"""

from __future__ import annotations

from typing import Any

from qubes_core.firewall import ManualClock, parse_api_rules, set_clock
from tests.support import wait_until_async


def rules_in(netvm: Any, vm: Any, ip: str | None = None) -> dict[str, bytes]:
    base = f"/qubes-firewall/{ip or vm.ip}"
    return {key[len(base):]: value for key, value in netvm.qdb.multiread(base).items()
            if key == base or key.startswith(base + "/")}


async def test_start_exports_and_shutdown_withdraws(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    fw = lifecycle_app.domains["sys-firewall"]
    work.firewall.set_rules(parse_api_rules("action=accept proto=tcp dstports=443\n"
                                            "action=drop\n"))
    await work.start()  # starts sys-net, then sys-firewall, then work
    assert rules_in(fw, work) == {
        "": b"", "/policy": b"drop",
        "/0000": b"action=accept proto=tcp dstports=443-443", "/0001": b"action=drop"}
    # sys-firewall's own (default) rules went to sys-net when it started.
    net = lifecycle_app.domains["sys-net"]
    assert rules_in(net, fw)["/0000"] == b"action=accept"
    await work.shutdown(wait=True)
    assert rules_in(fw, work) == {}
    assert rules_in(net, fw) != {}


async def test_netvm_restart_gets_rules_of_running_vms(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    fw = lifecycle_app.domains["sys-firewall"]
    net = lifecycle_app.domains["sys-net"]
    await work.start()
    work.netvm = net  # sys-firewall no longer serves a running VM
    assert rules_in(fw, work) == {}
    await fw.shutdown(wait=True)
    work.netvm = fw
    assert rules_in(net, work) == {}
    await fw.start()  # a new QubesDB: the running VM's rules are written into it
    assert rules_in(fw, work)["/policy"] == b"drop"
    assert rules_in(fw, work)["/0000"] == b"action=accept"


async def test_expiry_reaches_the_running_netvm(lifecycle_app: Any) -> None:
    clock = ManualClock()
    set_clock(lifecycle_app, clock)
    work = lifecycle_app.domains["work"]
    fw = lifecycle_app.domains["sys-firewall"]
    await work.start()
    now = int(clock.time())
    work.firewall.set_rules(parse_api_rules(f"action=accept expire={now + 60}\n"
                                            "action=drop\n"))
    await lifecycle_app.fire_event_async("qubesd-start", server=None)
    try:
        assert rules_in(fw, work)["/0000"] == b"action=accept"
        clock.advance(60)
        # firewall.xml is written in a worker thread, then the export follows
        await wait_until_async(lambda: rules_in(fw, work)["/0000"] == b"action=drop",
                               what="the expired rule leaving the export")
        assert rules_in(fw, work) == {"": b"", "/policy": b"drop", "/0000": b"action=drop"}
        assert work.firewall.api_text() == "action=drop\n"
    finally:
        await lifecycle_app.fire_event_async("qubesd-stop")
