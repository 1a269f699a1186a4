"""Admin API round trips against a real qubesd, with 100 and 1000 VMs.

Every figure is a median; the floor is ``socat - UNIX-CONNECT:`` run as a new
process in the same run (what any client process costs at least). The
reference's figures (FACTS.md) are printed alongside for comparison: Get
0.49 ms, GetAll 0.83 ms, vm.List 1.2 ms, 100 VMs x 10 properties 0.095 s by
GetAll, a qubesd-query process ~300 ms.

Client start-up: the fast client (a C program, see bench_cli for its ratio to
socat side by side) and qubesd-query, and the interpreter's own start-up with
and without ``site``. Writes (1000 VMs):
feature.Set throughput of 1, 8 and 32 concurrent clients with group commit
against a qubesd started with ``--save-each-write`` (one save per write call,
the way it was before), and one client's latency in both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import Report, median_time
from qubes_core.app import Qubes
from qubes_core.client import Qubes as ClientQubes
from qubes_core.client.embedded import EmbeddedQubesd

LIST_PROPERTIES = ("name", "label", "klass", "netvm", "template", "memory", "maxmem",
                   "vcpus", "virt_mode", "ip")
WRITE_CLIENTS = (1, 8, 32)


def build(base: Path, count: int) -> None:
    app = Qubes.create_empty_store(base / "qubes.xml", setup_check="auto")
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


def interpreter_start_up(report: Report) -> None:
    """Where a Python client's start-up goes: the interpreter, and ``site`` on top."""
    for name, flags in (("python -I -S -c pass", ["-I", "-S"]), ("python -c pass", [])):
        seconds = process_time([sys.executable, *flags, "-c", "pass"], b"", dict(os.environ), 15)
        report.time(f"interpreter start-up: {name}", seconds)
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                           capture_output=True, text=True, check=True).stderr
    for line in trace.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) == 3 and fields[2] == "site":
            report.time("  of which importing site (python -X importtime)",
                        int(fields[1]) / 1e6, "with the editable-install finder")


@contextlib.contextmanager
def installation(count: int, prefix: str = "bench-api") -> Iterator[Path]:
    """A temporary installation of ``count`` VMs, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-{count}-"))
    try:
        build(tmp, count)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def served(base: Path) -> Iterator[int | None]:
    """A qubesd (offline runtime) serving ``base`` for the duration of the block; its pid."""
    daemon = EmbeddedQubesd.start(base, runtime="offline")
    try:
        yield daemon.process.pid if daemon is not None else None
    finally:
        if daemon is not None:
            daemon.stop()


def run_size(report: Report, count: int) -> None:
    with installation(count) as tmp:
        with served(tmp) as pid:
            measure(report, tmp, count, pid)
        if count >= 1000:
            measure_writes(report, tmp, count)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listing_cpu(client: ClientQubes, pid: int, repeat: int = 5) -> tuple[float, float]:
    """Median CPU seconds of one listing: the client's and qubesd's. Less sensitive to
    the machine's load than wall time."""
    own, served = [], []
    for _ in range(repeat):
        before_server, before_client = cpu_seconds(pid), time.process_time()
        list_all(client)
        own.append(time.process_time() - before_client)
        served.append(cpu_seconds(pid) - before_server)
    return statistics.median(own), statistics.median(served)


def measure(report: Report, base: Path, count: int, pid: int | None = None) -> None:
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
    call = ["-e", "dom0", "admin.vm.property.Get", "vm0", "label"]
    clients = {
        "qubesd-query-fast (C)": [str(bindir / "qubesd-query-fast")],
        "qubesd-query": [str(bindir / "qubesd-query")],
    }
    for name, command in clients.items():
        seconds = process_time(command + call, b"", env, 15)
        report.time(f"[{tag}] {name}", seconds,
                    "reference: C client ~20 ms, qubesd-query ~300 ms")
        report.ratio(f"[{tag}] {name} / socat", seconds, floor)

    rows = list_all(client)
    assert rows == count + 1
    listing = median_time(lambda: list_all(client), repeat=5)
    target = "target < 100 ms" if count <= 100 else "target < 1 s"
    report.time(f"[{tag}] list all VMs x 10 properties (GetAll)", listing,
                f"{target}; reference 0.095 s for 100")
    if pid is not None:
        client_cpu, server_cpu = listing_cpu(client, pid)
        report.time(f"[{tag}]   CPU time of it: client", client_cpu)
        report.time(f"[{tag}]   CPU time of it: qubesd", server_cpu,
                    f"per GetAll {server_cpu / (count + 1) * 1e3:.2f} ms")
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

    samples: list[float] = []

    def timed_get() -> None:
        start = time.perf_counter()
        vm.label  # noqa: B018
        samples.append(time.perf_counter() - start)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            timed_get()
    finally:
        stop.set()
        thread.join()
    busy = statistics.median(samples)
    report.time(f"[{tag}] property.Get while another client writes", busy,
                f"{writes[0]} writes meanwhile")
    report.ratio(f"[{tag}] Get under writes / idle Get", busy, get)
    report.time(f"[{tag}]   95th percentile of those Gets",
                statistics.quantiles(samples, n=20)[-1],
                "a read can wait for one serialization of the model, never for the disk")
    save = median_time(lambda: client.call("admin.vm.feature.Set", "vm1", "bench", "x"),
                       repeat=30)
    report.time(f"[{tag}] feature.Set (persisted before the reply)", save)


def write_rate(base: Path, clients: int, window: float = 1.5, windows: int = 3) -> float:
    """Median writes per second (feature.Set, each to its own VM) of ``clients`` threads."""
    counts = [0] * clients
    stop = threading.Event()

    def client_run(index: int) -> None:
        vm = ClientQubes(base).domains.get_blind(f"vm{index}")
        while not stop.is_set():
            vm.features["bench"] = str(counts[index])
            counts[index] += 1

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    rates = []
    try:
        time.sleep(0.3)  # every client connected and writing
        for _ in range(windows):
            before, start = sum(counts), time.perf_counter()
            time.sleep(window)
            rates.append((sum(counts) - before) / (time.perf_counter() - start))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return statistics.median(rates)


def measure_writes(report: Report, base: Path, count: int) -> None:
    """feature.Set throughput with group commit against one save per write, same run."""
    tag = f"{count} VMs"
    results: dict[str, dict[int, float]] = {}
    for mode, options in (("one save per write", ("--save-each-write",)),
                          ("group commit", ())):
        daemon = EmbeddedQubesd.start(base, runtime="offline", options=options)
        try:
            client = ClientQubes(base)
            latency = median_time(
                lambda c=client: c.call("admin.vm.feature.Set", "vm1", "bench", "x"),
                repeat=30)
            report.time(f"[{tag}] feature.Set, one client ({mode})", latency,
                        "persisted before the reply")
            results[mode] = {}
            for clients in WRITE_CLIENTS:
                rate = write_rate(base, clients)
                results[mode][clients] = rate
                report.value(f"[{tag}] feature.Set, {clients} clients ({mode})",
                             f"{rate:.0f}/s", "writes per second")
        finally:
            if daemon is not None:
                daemon.stop()
    for clients in WRITE_CLIENTS:
        # A ratio of rates: the baseline's time per write over group commit's.
        report.ratio(f"[{tag}] {clients} clients: group commit / one save per write",
                     results["group commit"][clients], results["one save per write"][clients],
                     "throughput ratio")


def run(report: Report) -> None:
    if shutil.which("socat") is None:
        report.value("api", "skipped", "socat is needed for the floor measurement")
        return
    interpreter_start_up(report)
    for count in (100, 1000):
        run_size(report, count)
