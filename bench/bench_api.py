"""Admin API round trips against a real qubesd, with 100 and 1000 VMs.

Every figure is a median; the floor is ``socat - UNIX-CONNECT:`` run as a new
process in the same run (what any client process costs at least). The
reference's figures (FACTS.md) are printed alongside for comparison: Get
0.49 ms, GetAll 0.83 ms, vm.List 1.2 ms, 100 VMs x 10 properties 0.095 s by
GetAll, a qubesd-query process ~300 ms.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.common import Report, median_time
from qubes_core.app import Qubes
from qubes_core.client import Qubes as ClientQubes
from qubes_core.client.embedded import EmbeddedQubesd

LIST_PROPERTIES = ("name", "label", "klass", "netvm", "template", "memory", "maxmem",
                   "vcpus", "virt_mode", "ip")


def build(base: Path, count: int) -> None:
    app = Qubes.create_empty_store(base / "qubes.xml")
    try:
        template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
        app.default_template = template
        net = app.add_new_vm("AppVM", name="sys-net", label="red", provides_network=True,
                             netvm=None)
        app.default_netvm = app.add_new_vm("AppVM", name="sys-firewall", label="green",
                                           provides_network=True, netvm=net)
        for i in range(count - 3):
            app.add_new_vm("AppVM", name=f"vm{i}", label="blue")
        app.save()
    finally:
        app.close()


def list_all(client: ClientQubes) -> int:
    """What qvm-ls does: every VM with ten properties (GetAll within a cache scope)."""
    rows = 0
    with client.cache():
        for vm in client.domains:
            for prop in LIST_PROPERTIES:
                if prop == "klass":
                    vm.klass  # noqa: B018
                else:
                    getattr(vm, prop, None)
            rows += 1
    return rows


def list_all_by_get(client: ClientQubes) -> None:
    for vm in client.domains:
        for prop in LIST_PROPERTIES:
            if prop != "klass":
                getattr(vm, prop, None)


def process_time(command: list[str], stdin: bytes, env: dict[str, str], repeat: int) -> float:
    def once() -> None:
        subprocess.run(command, input=stdin, stdout=subprocess.DEVNULL, env=env, check=True)

    once()  # warm the page cache
    return median_time(once, repeat=repeat)


def run_size(report: Report, count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-api-{count}-"))
    try:
        build(tmp, count)
        daemon = EmbeddedQubesd.start(tmp, runtime="offline")
        try:
            measure(report, tmp, count)
        finally:
            if daemon is not None:
                daemon.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(report: Report, base: Path, count: int) -> None:
    client = ClientQubes(base)
    vm = client.domains.get_blind("vm0")
    socket_path = str(client.transport.socket_path)
    tag = f"{count} VMs"

    get = median_time(lambda: client.call("admin.vm.property.Get", "vm0", "label"), repeat=300)
    report.time(f"[{tag}] property.Get, Python client", get, "reference 0.49 ms")
    get_all = median_time(lambda: client.call("admin.vm.property.GetAll", "vm0"), repeat=200)
    report.time(f"[{tag}] property.GetAll of one VM", get_all, "reference 0.83 ms")
    vm_list = median_time(lambda: client.call("admin.vm.List"), repeat=50)
    report.time(f"[{tag}] admin.vm.List", vm_list, "reference 1.2 ms (100 VMs)")

    env = {**os.environ, "QUBES_BASE_DIR": str(base)}
    request = b"admin.vm.property.Get+label dom0 name vm0\x00"
    bindir = Path(sys.executable).parent
    floor = process_time(["socat", "-", f"UNIX-CONNECT:{socket_path}"], request, env, 15)
    report.time(f"[{tag}] socat process (floor)", floor)
    for tool in ("qubesd-query-fast", "qubesd-query"):
        seconds = process_time([str(bindir / tool), "-e", "dom0", "admin.vm.property.Get",
                                "vm0", "label"], b"", env, 15)
        report.time(f"[{tag}] {tool} process", seconds,
                    "reference: C client ~20 ms, qubesd-query ~300 ms")
        report.ratio(f"[{tag}] {tool} / socat", seconds, floor)

    rows = list_all(client)
    assert rows == count + 1
    listing = median_time(lambda: list_all(client), repeat=5)
    target = "target < 100 ms" if count <= 100 else "target < 1 s"
    report.time(f"[{tag}] list all VMs x 10 properties (GetAll)", listing,
                f"{target}; reference 0.095 s for 100")
    if count <= 100:
        by_get = median_time(lambda: list_all_by_get(client), repeat=3)
        report.time(f"[{tag}] list all VMs x 10 properties (one Get each)", by_get,
                    "reference 0.43 s")
        report.ratio(f"[{tag}] by Get / by GetAll", by_get, listing)

    # Reads while a writer keeps qubesd saving qubes.xml (fsync in a worker thread).
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        other = ClientQubes(base)
        target_vm = other.domains.get_blind("vm1")
        while not stop.is_set():
            target_vm.features["bench"] = str(writes[0])
            writes[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        busy = median_time(lambda: vm.label, repeat=300)
    finally:
        stop.set()
        thread.join()
    report.time(f"[{tag}] property.Get while another client writes", busy,
                f"{writes[0]} writes meanwhile")
    report.ratio(f"[{tag}] Get under writes / idle Get", busy, get)
    save = median_time(lambda: client.call("admin.vm.feature.Set", "vm1", "bench", "x"),
                       repeat=30)
    report.time(f"[{tag}] feature.Set (persisted before the reply)", save)


def run(report: Report) -> None:
    if shutil.which("socat") is None:
        report.value("api", "skipped", "socat is needed for the floor measurement")
        return
    for count in (100, 1000):
        run_size(report, count)
