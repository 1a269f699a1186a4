"""Timing and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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
