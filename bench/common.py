"""Timing and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def median_time(func: Callable[[], Any], repeat: int = 5, setup: Callable[[], Any] | None = None
                ) -> float:
    """Median wall-clock seconds of ``func()`` over ``repeat`` runs (``setup`` untimed)."""
    samples = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


class Report:
    """Collects lines of one benchmark run and prints them as they come."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def time(self, name: str, seconds: float, note: str = "") -> None:
        self.rows.append((name, fmt_seconds(seconds), note))
        print(f"  {name:<58} {fmt_seconds(seconds):>12}  {note}", flush=True)

    def ratio(self, name: str, value: float, baseline: float, note: str = "") -> None:
        ratio = value / baseline if baseline else float("inf")
        text = f"{ratio:.2f}x"
        self.rows.append((name, text, note))
        print(f"  {name:<58} {text:>12}  {note}", flush=True)

    def value(self, name: str, text: str, note: str = "") -> None:
        self.rows.append((name, text, note))
        print(f"  {name:<58} {text:>12}  {note}", flush=True)


class CpuMeter:
    """CPU seconds used by this process and all it starts from now on (daemons, sandboxes
    and their processes too: they stay in the cgroup they were forked in), read from a
    cgroup of its own; less sensitive to the machine's load than wall time. ``seconds()``
    is None where no cgroup can be made (not root, no cpuacct or cgroup2)."""

    V1 = Path("/sys/fs/cgroup/cpuacct")
    V2 = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))

    def __init__(self, name: str):
        self.dir: Path | None = None
        self.read: Callable[[Path], float] | None = None
        for root, read in [(self.V1, _cpuacct_usage), *[(r, _cpu_stat_usage) for r in self.V2]]:
            if not (root / "cgroup.procs").exists():
                continue
            group = root / f"bench-{name}-{os.getpid()}"
            try:
                group.mkdir(exist_ok=True)
                (group / "cgroup.procs").write_text(str(os.getpid()))
                read(group)
            except (OSError, ValueError):
                with contextlib.suppress(OSError):
                    group.rmdir()
                continue
            self.dir, self.read, self.root = group, read, root
            return

    def seconds(self) -> float | None:
        return self.read(self.dir) if self.dir is not None and self.read is not None else None

    def close(self) -> None:
        """Back to the parent group; the group goes when the last process in it has ended."""
        if self.dir is not None:
            with contextlib.suppress(OSError):
                (self.root / "cgroup.procs").write_text(str(os.getpid()))
                self.dir.rmdir()


def _cpuacct_usage(group: Path) -> float:
    return int((group / "cpuacct.usage").read_text()) / 1e9


def _cpu_stat_usage(group: Path) -> float:
    for line in (group / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError("no usage_usec in cpu.stat")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot, summed over its cores
    (``/proc/stat``: every process and the kernel's own threads, such as those doing a
    loop device's I/O, which no cgroup of the benchmark holds)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """The 1-minute load average, for the note beside a figure."""
    return f"load {os.getloadavg()[0]:.1f}"
