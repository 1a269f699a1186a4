"""Run every ``bench/bench_*.py`` (or those named on the command line)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import bench
from bench.common import Report


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the benchmarks and print medians.")
    parser.add_argument("only", nargs="*", help="topics to run (e.g. model storage)")
    args = parser.parse_args()
    report = Report()
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda i: i.name):
        if not info.name.startswith("bench_"):
            continue
        topic = info.name[len("bench_"):]
        if args.only and topic not in args.only:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        report.section(topic)
        module.run(report)


if __name__ == "__main__":
    main()
