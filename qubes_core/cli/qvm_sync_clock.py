"""qvm-sync-clock: set dom0's clock from the clockvm's (``qubes.GetDate`` run in it).

dom0 has no network; the clockvm (the ``clockvm`` global property) keeps time by
NTP and answers ``qubes.GetDate`` with its UTC time. Its answer is untrusted: only
``YYYY-MM-DDTHH:MM:SS+00:00`` (or ``Z``) is accepted, and a time before this
program's build era or more than a year from dom0's own is refused, so a
compromised clockvm cannot move dom0's clock arbitrarily far. Without a clockvm
there is nothing to do (exit 0). ``--dry-run`` prints the time instead of setting
it. Run hourly by ``qubes-sync-clock.timer``, as Qubes does.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qubes_core.cli.common import ToolError, run, tool_parser

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

DATE_RE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\+00:00|Z)\n?$")
EARLIEST = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
MAX_SKEW = datetime.timedelta(days=366)
TIMEOUT = 60


def parser() -> argparse.ArgumentParser:
    """qvm-sync-clock's command line."""
    parser = tool_parser("qvm-sync-clock", "Set dom0's clock from the clockvm's.")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the clockvm's time, do not set the clock")
    return parser


def parse_date(untrusted: bytes, now: datetime.datetime) -> datetime.datetime:
    """The clockvm's answer as a UTC time; a :class:`ToolError` for anything else."""
    match = DATE_RE.match(untrusted[:64])
    if not match:
        raise ToolError("the clockvm's answer is not a UTC time (YYYY-MM-DDTHH:MM:SS+00:00)")
    try:
        moment = datetime.datetime.fromisoformat(match.group(1).decode()).replace(
            tzinfo=datetime.UTC)
    except ValueError:
        raise ToolError("the clockvm's answer is not a valid date") from None
    if moment < EARLIEST or abs(moment - now) > MAX_SKEW:
        raise ToolError(f"the clockvm's time {moment.isoformat()} is too far from dom0's "
                        f"({now.replace(microsecond=0).isoformat()}): not taken")
    return moment


def ask_clockvm(clockvm: str) -> bytes:
    """Run ``qubes.GetDate`` in the clockvm (through qvm-run) and return its output."""
    qvm_run = shutil.which("qvm-run")
    if qvm_run is None:
        raise ToolError("qvm-run is not installed: cannot ask the clockvm")
    try:
        done = subprocess.run([qvm_run, "--pass-io", "--service", clockvm, "qubes.GetDate"],
                              capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{clockvm} did not answer qubes.GetDate within {TIMEOUT} s") from None
    if done.returncode != 0:
        raise ToolError(f"qubes.GetDate in {clockvm} failed (exit {done.returncode})")
    return done.stdout


def sync(args: argparse.Namespace, app: Qubes) -> int:
    """Ask, check, set."""
    clockvm = app.clockvm
    if clockvm is None:
        if not args.quiet:
            print("no clockvm is set: nothing to do")
        return 0
    moment = parse_date(ask_clockvm(str(clockvm)), datetime.datetime.now(datetime.UTC))
    if args.dry_run:
        print(moment.isoformat())
        return 0
    for command in (["date", "-u", "-s", moment.isoformat()], ["hwclock", "--systohc"]):
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ToolError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-sync-clock``."""
    return run(parser(), argv, sync)


if __name__ == "__main__":
    sys.exit(main())
