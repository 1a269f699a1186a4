"""Firewall: Set and export of 1000 rules for one VM; 200 VMs re-exported after a netvm change.

Baselines measured in the same run: writing the same firewall.xml bytes with
the same atomic write (the disk floor of Set), writing the same QubesDB keys
straight into the store (the floor of an export), and a small Get over the
socket (the floor of an API call).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import Report, median_time
from qubes_core.app import Qubes
from qubes_core.backend import Runtime
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.client.transport import Transport
from qubes_core.firewall import parse_api_rules
from qubes_core.firewall.export import export_of
from qubes_core.firewall.xmlfile import serialize, write_atomic
from qubes_core.qubesdb import InMemoryQubesDB

RULES = 1000
VMS = 200
RULES_PER_VM = 10


class EverythingRuns(Runtime):
    """Every VM runs (the export only happens for running VMs and netvms)."""

    name = "bench"

    def state(self, vm: Any) -> str:
        return "Running"

    def start_time(self, vm: Any) -> float | None:
        return None


def rules_text(count: int) -> str:
    lines = []
    for number in range(count - 1):
        if number % 4 == 0:
            lines.append(f"action=accept proto=tcp dsthost=10.{number // 256}.{number % 256}.0/24"
                         f" dstports={1000 + number}")
        elif number % 4 == 1:
            lines.append(f"action=accept proto=udp dstports={2000 + number}-{2100 + number}")
        elif number % 4 == 2:
            lines.append(f"action=drop dsthost=h{number}.example.org")
        else:
            lines.append("action=accept proto=icmp icmptype=8")
    lines.append("action=drop")
    return "".join(line + "\n" for line in lines)


def make_app(base: Path, vms: int) -> Qubes:
    app = Qubes.create_empty_store(base / "qubes.xml", runtime=EverythingRuns(), setup_check="auto")
    template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
    app.default_template = template
    net = app.add_new_vm("AppVM", name="sys-net", label="red", provides_network=True,
                         netvm=None)
    for name in ("sys-firewall", "sys-firewall2"):
        app.add_new_vm("AppVM", name=name, label="green", provides_network=True, netvm=net)
    app.default_netvm = app.domains["sys-firewall"]
    for number in range(vms):
        app.add_new_vm("AppVM", name=f"app{number}", label="blue")
    app.save()
    return app


def bench_one_vm(report: Report, base: Path) -> None:
    text = rules_text(RULES)
    app = make_app(base, 1)
    vm = app.domains["app0"]
    rules = parse_api_rules(text)
    report.time(f"parse {RULES} rules (API text)", median_time(lambda: parse_api_rules(text)))
    set_time = median_time(lambda: vm.firewall.set_rules(parse_api_rules(text)))
    report.time(f"Set {RULES} rules in-process (parse, file, export)", set_time)
    data = serialize(rules)
    floor = median_time(lambda: write_atomic(base / "floor.xml", data))
    report.time("  baseline: atomic write of the same firewall.xml", floor)
    report.ratio("  Set / atomic write", set_time, floor)
    export = export_of(app)
    export_time = median_time(lambda: export.refresh(vm))
    report.time(f"export {RULES} rules to the netvm's QubesDB", export_time)
    entries = vm.firewall.qdb_entries(4)
    qdb = InMemoryQubesDB()
    base_key = f"/qubes-firewall/{vm.ip}"

    def raw_writes() -> None:
        qdb.rm(base_key + "/")
        for key, value in entries.items():
            qdb.write(f"{base_key}/{key}", value)
        qdb.write(base_key, "")

    raw = median_time(raw_writes)
    report.time("  baseline: the same keys written straight into QubesDB", raw)
    report.ratio("  export / raw writes", export_time, raw)
    app.close()

    qubesd = EmbeddedQubesd.start(base, runtime="offline")
    assert qubesd is not None
    try:
        transport = Transport(qubesd.socket_path)
        payload = text.encode()
        report.value("  Set payload", f"{len(payload)} B")
        api_set = median_time(lambda: transport.call("admin.vm.firewall.Set", "app0", "",
                                                     payload))
        report.time(f"admin.vm.firewall.Set of {RULES} rules through qubesd", api_set)
        api_get = median_time(lambda: transport.call("admin.vm.firewall.Get", "app0"),
                              repeat=9)
        report.time(f"admin.vm.firewall.Get of {RULES} rules", api_get)
        transport.call("admin.vm.firewall.Set", "app0", "", b"action=accept\n")
        small = median_time(lambda: transport.call("admin.vm.firewall.Get", "app0"), repeat=21)
        report.time("  baseline: Get of one rule", small)
        report.ratio("  Set 1000 / Get 1", api_set, small)
    finally:
        qubesd.stop()


def bench_netvm_change(report: Report, base: Path) -> None:
    app = make_app(base, VMS)
    text = rules_text(RULES_PER_VM)
    for number in range(VMS):
        app.domains[f"app{number}"].firewall.set_rules(parse_api_rules(text))
    fw1, fw2 = app.domains["sys-firewall"], app.domains["sys-firewall2"]
    export = export_of(app)
    export.refresh_all(app.domains[f"app{n}"] for n in range(VMS))
    assert len(fw1.qdb.list("/qubes-firewall/")) >= VMS * (RULES_PER_VM + 2)
    state = {"current": fw1}

    def switch() -> None:
        state["current"] = fw2 if state["current"] is fw1 else fw1
        app.default_netvm = state["current"]

    switch_time = median_time(switch, repeat=6)
    assert fw1.qdb.list("/qubes-firewall/") == [] or fw2.qdb.list("/qubes-firewall/") == []
    report.time(f"{VMS} VMs x {RULES_PER_VM + 1} rules moved to another netvm "
                "(default_netvm)", switch_time)

    def restart() -> None:
        netvm = state["current"]
        netvm.fire_event("domain-shutdown", reason="bench")
        netvm.qdb = InMemoryQubesDB()
        netvm.fire_event("domain-qdb-create")

    restart_time = median_time(restart)
    report.time(f"{VMS} VMs re-exported after their netvm restarted", restart_time)
    entries = [app.domains[f"app{n}"].firewall.qdb_entries(4) for n in range(VMS)]
    qdb = InMemoryQubesDB()

    def raw_writes() -> None:
        for number, values in enumerate(entries):
            base_key = f"/qubes-firewall/10.137.9.{number}"
            qdb.rm(base_key + "/")
            for key, value in values.items():
                qdb.write(f"{base_key}/{key}", value)
            qdb.write(base_key, "")

    raw = median_time(raw_writes)
    report.time("  baseline: the same keys written straight into QubesDB", raw)
    report.ratio("  netvm restart re-export / raw writes", restart_time, raw)
    report.ratio("  default_netvm switch / raw writes", switch_time, raw)
    app.close()


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-firewall-") as tmp:
        (Path(tmp) / "one").mkdir()
        bench_one_vm(report, Path(tmp) / "one")
        (Path(tmp) / "many").mkdir()
        bench_netvm_change(report, Path(tmp) / "many")
