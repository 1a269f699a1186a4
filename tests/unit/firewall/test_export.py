"""Export of rules into the netvm's QubesDB, following starts, stops and changes."""

from __future__ import annotations

from qubes_core.app import Qubes
from qubes_core.firewall import Rule, parse_api_rules
from qubes_core.firewall.export import export_of
from tests.unit.firewall.conftest import exported


def start_network(app: Qubes) -> None:
    for name in ("sys-net", "sys-firewall"):
        app.switch.power_on(app.domains[name])


def test_export_shape_with_done_key_last(net_app: Qubes) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    work.firewall.set_rules(parse_api_rules(
        "action=accept proto=tcp dsthost=10.1.0.0/16 dstports=443 comment=x\naction=drop\n"))
    start_network(net_app)  # gives sys-firewall a new QubesDB
    writes: list[str] = []
    original = fw.qdb.write

    def recording_write(key: str, value: str | bytes) -> None:
        writes.append(key)
        original(key, value)

    fw.qdb.write = recording_write  # type: ignore[method-assign]
    net_app.switch.power_on(work)
    base = f"/qubes-firewall/{work.ip}"
    assert exported(fw, work) == {
        "": b"", "/policy": b"drop",
        "/0000": b"action=accept proto=tcp dst4=10.1.0.0/16 dstports=443-443",
        "/0001": b"action=drop",
    }
    assert writes[-1] == base  # the "done" key comes after the rules
    assert set(writes[:-1]) == {base + "/policy", base + "/0000", base + "/0001"}
    # sys-net holds sys-firewall's rules only; the VM itself holds none.
    net = net_app.domains["sys-net"]
    assert {key.split("/")[2] for key in net.qdb.list("/qubes-firewall/")} == {fw.ip}
    assert work.qdb.list("/qubes-firewall/") == []


def test_nothing_exported_while_halted(net_app: Qubes) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    work.firewall.set_rules([Rule(action="drop")])
    assert fw.qdb.list("/qubes-firewall/") == []
    start_network(net_app)
    assert fw.qdb.list("/qubes-firewall/") == []  # work does not run
    net_app.switch.power_on(work)
    assert exported(fw, work)["/0000"] == b"action=drop"


def test_netvm_start_exports_running_connected_vms(net_app: Qubes) -> None:
    work, personal = net_app.domains["work"], net_app.domains["personal"]
    fw = net_app.domains["sys-firewall"]
    net_app.switch.running.update({"work", "personal"})  # already up
    personal.firewall.set_rules([Rule(action="drop")])
    assert fw.qdb.list("/qubes-firewall/") == []
    start_network(net_app)
    assert exported(fw, work)["/0000"] == b"action=accept"
    assert exported(fw, personal)["/0000"] == b"action=drop"


def test_rules_change_is_re_exported(net_app: Qubes) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    start_network(net_app)
    net_app.switch.power_on(work)
    work.firewall.set_rules(parse_api_rules("action=drop proto=udp\naction=drop\naction=drop\n"))
    assert sorted(exported(fw, work)) == ["", "/0000", "/0001", "/0002", "/policy"]
    work.firewall.set_rules([Rule(action="accept")])
    # Old rule keys are gone, not left behind.
    assert exported(fw, work) == {"": b"", "/policy": b"drop", "/0000": b"action=accept"}


def test_vm_halt_removes_its_entries(net_app: Qubes) -> None:
    work, personal = net_app.domains["work"], net_app.domains["personal"]
    fw = net_app.domains["sys-firewall"]
    start_network(net_app)
    net_app.switch.power_on(work)
    net_app.switch.power_on(personal)
    net_app.switch.power_off(work)
    assert exported(fw, work) == {}
    assert exported(fw, personal) != {}


def test_netvm_change_moves_entries(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    fw, net = net_app.domains["sys-firewall"], net_app.domains["sys-net"]
    start_network(net_app)
    net_app.switch.power_on(work)
    work.netvm = net
    assert exported(fw, work) == {}
    assert exported(net, work)["/0000"] == b"action=accept"
    assert export_of(net_app).exported_to(work) is net
    del work.netvm  # back to the default: sys-firewall
    assert exported(net, work) == {}
    assert exported(fw, work)["/policy"] == b"drop"
    ip = work.ip
    work.netvm = None
    assert fw.qdb.list("/qubes-firewall/") == []
    assert net.qdb.list(f"/qubes-firewall/{ip}") == []
    assert export_of(net_app).exported_to(work) is None


def test_ip_change_moves_entries(net_app: Qubes) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    start_network(net_app)
    net_app.switch.power_on(work)
    old_ip = work.ip
    work.ip = "10.137.99.5"
    assert fw.qdb.list(f"/qubes-firewall/{old_ip}") == []
    assert fw.qdb.read("/qubes-firewall/10.137.99.5/0000") == b"action=accept"
    del work.ip
    assert fw.qdb.list("/qubes-firewall/10.137.99.5") == []
    assert fw.qdb.read(f"/qubes-firewall/{old_ip}") == b""


def test_default_netvm_change_moves_followers(net_app: Qubes) -> None:
    work, personal = net_app.domains["work"], net_app.domains["personal"]
    fw, net = net_app.domains["sys-firewall"], net_app.domains["sys-net"]
    personal.netvm = fw  # set explicitly: does not follow the default
    start_network(net_app)
    net_app.switch.power_on(work)
    net_app.switch.power_on(personal)
    net_app.default_netvm = net
    assert exported(net, work) != {} and exported(fw, work) == {}
    assert exported(fw, personal) != {} and exported(net, personal) == {}


def test_netvm_halt_forgets_and_restart_re_exports(net_app: Qubes) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    start_network(net_app)
    net_app.switch.power_on(work)
    net_app.switch.power_off(fw)
    assert fw.qdb.list("/qubes-firewall/") == []
    assert export_of(net_app).exported_to(work) is None
    work.firewall.set_rules([Rule(action="drop")])  # while the netvm is down
    assert fw.qdb.list("/qubes-firewall/") == []
    net_app.switch.power_on(fw)
    assert exported(fw, work)["/0000"] == b"action=drop"


def test_removed_vm_is_withdrawn(net_app: Qubes) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    start_network(net_app)
    net_app.switch.power_on(work)
    net_app.switch.running.discard("work")  # crashed without a shutdown event
    del net_app.domains["work"]
    assert fw.qdb.list("/qubes-firewall/") == []
