"""The command-line tools as a user runs them: whole processes against a real qubesd.

- ``qvm-ls`` on 100 and 1000 VMs, against its floor measured in the same run: a
  Python process start (``python -c pass``, with site as a console script has it)
  plus the round trips it needs (one ``admin.vm.List`` and one ``GetAll`` per VM,
  made by the Python client in this process). Goal: <= 0.12 s at 100 VMs and
  within 1.3x of that floor (the reference's qvm-ls: 0.28 s, of which 0.15 s
  Python start-up).
- ``qvm-prefs VM PROP`` as a process, against Python start-up plus one Get.
- ``qubesd-query-fast`` (the C client) against ``socat - UNIX-CONNECT:``, the floor
  of any client process, run alternately so that both see the same load. Goal:
  <= 1.5x socat.

Every figure is a median.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_api import installation, served
from bench.common import Report, median_time
from qubes_core.client import Qubes as ClientQubes

BIN = Path(sys.executable).parent


def process_seconds(command: list[str], env: dict[str, str], stdin: bytes = b"") -> float:
    """Wall-clock seconds of one run of ``command`` (output discarded; must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, input=stdin, stdout=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - start


def side_by_side(commands: dict[str, tuple[list[str], bytes]], env: dict[str, str],
                 repeat: int) -> dict[str, float]:
    """Median seconds of each command, run in turn ``repeat`` times (after a warm-up)."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for command, stdin in commands.values():
        process_seconds(command, env, stdin)
    for _ in range(repeat):
        for name, (command, stdin) in commands.items():
            samples[name].append(process_seconds(command, env, stdin))
    return {name: statistics.median(values) for name, values in samples.items()}


def round_trips_of_qvm_ls(client: ClientQubes) -> None:
    """The calls qvm-ls needs, made in this process: List, then one GetAll per VM."""
    for line in client.call("admin.vm.List").splitlines():
        client.call("admin.vm.property.GetAll", line.split(" ", 1)[0])


def measure(report: Report, base: Path, count: int) -> None:
    env = {**os.environ, "QUBES_BASE_DIR": str(base)}
    # As installed: modules byte-compiled (the warm-up run writes what is missing).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    client = ClientQubes(base)
    tag = f"{count} VMs"
    trips = median_time(lambda: round_trips_of_qvm_ls(client), repeat=7)
    report.time(f"[{tag}] qvm-ls round trips (List + GetAll each), in-process", trips)
    times = side_by_side({
        "python": ([sys.executable, "-c", "pass"], b""),
        "qvm-ls": ([str(BIN / "qvm-ls")], b""),
    }, env, repeat=9 if count <= 100 else 5)
    floor = times["python"] + trips
    report.time(f"[{tag}] qvm-ls process", times["qvm-ls"],
                "goal <= 0.12 s" if count <= 100 else "")
    report.time(f"[{tag}] floor: python start-up + round trips", floor)
    report.ratio(f"[{tag}] qvm-ls / floor", times["qvm-ls"], floor, "goal <= 1.3x")
    if count > 100:
        return
    get = median_time(lambda: client.call("admin.vm.property.Get", "vm0", "label"), repeat=100)
    times = side_by_side({
        "python": ([sys.executable, "-c", "pass"], b""),
        "qvm-prefs": ([str(BIN / "qvm-prefs"), "vm0", "label"], b""),
    }, env, repeat=15)
    report.time(f"[{tag}] qvm-prefs VM PROP process", times["qvm-prefs"])
    report.ratio(f"[{tag}] qvm-prefs / (python start-up + one Get)", times["qvm-prefs"],
                 times["python"] + get)

    socket_path = str(client.transport.socket_path)
    times = side_by_side({
        "socat": (["socat", "-", f"UNIX-CONNECT:{socket_path}"],
                  b"admin.vm.property.Get+label dom0 name vm0\0"),
        "fast": ([str(BIN / "qubesd-query-fast"), "-e", "dom0", "admin.vm.property.Get",
                  "vm0", "label"], b""),
        "python": ([str(BIN / "qubesd-query"), "-e", "dom0", "admin.vm.property.Get", "vm0",
                    "label"], b""),
    }, env, repeat=25)
    report.time(f"[{tag}] socat process (floor)", times["socat"])
    report.time(f"[{tag}] qubesd-query-fast (C) process", times["fast"])
    report.ratio(f"[{tag}] qubesd-query-fast / socat", times["fast"], times["socat"],
                 "goal <= 1.5x")
    report.time(f"[{tag}] qubesd-query (Python) process", times["python"])
    report.ratio(f"[{tag}] qubesd-query / socat", times["python"], times["socat"])


def run(report: Report) -> None:
    if shutil.which("socat") is None:
        report.value("cli", "skipped", "socat is needed for the floor measurement")
        return
    for count in (100, 1000):
        with installation(count, "bench-cli") as base, served(base):
            measure(report, base, count)
