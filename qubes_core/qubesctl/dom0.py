"""dom0's part of a run: ``salt-call --local`` on the installation's Salt tree.

Salt runs as its own process with ``--out=json`` (its output is judged by
:mod:`report`, then shown in the format the user asked for) and
``--retcode-passthrough``; the installation is named to it through its
configuration and ``QUBES_BASE_DIR``, so the ``qvm`` states reach the same
qubesd as qubesctl.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from qubes_core.paths import Paths
from qubes_core.qubesctl import report, saltconf


def salt_call_argv(config: Path, command: list[str], salt_args: list[str],
                   out: str = "json") -> list[str]:
    """The ``salt-call`` command line."""
    return [saltconf.salt_program("salt-call"), "--local", "-c", str(config),
            "--retcode-passthrough", f"--out={out}", "--log-level=quiet",
            "--log-file-level=info", *salt_args, *command]


def environment(paths: Paths) -> dict[str, str]:
    """The environment Salt runs with (the installation named, colour off in JSON)."""
    env = dict(os.environ)
    if not paths.production:
        env["QUBES_BASE_DIR"] = str(paths.base_dir)
    return env


def run(paths: Paths, config: Path, command: list[str], salt_args: list[str],
        log: Path, name: str = "dom0") -> tuple[report.Outcome, str]:
    """Run ``command`` in dom0; the outcome and Salt's JSON text."""
    argv = salt_call_argv(config, command, salt_args)
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=environment(paths),
                            stdin=subprocess.DEVNULL, check=False)
    outcome = report.Outcome(name, duration=time.monotonic() - started, log=log)
    report.settle(outcome, command[0], result.returncode, result.stdout)
    write_log(log, argv, result.returncode, result.stdout, result.stderr, outcome)
    return outcome, result.stdout


def write_log(log: Path, argv: list[str], code: int, stdout: str, stderr: str,
              outcome: report.Outcome) -> None:
    """Append one run's record to the target's log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as file:
        file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        file.write(f"exit code {code}; result {outcome.result}\n")
        for problem in outcome.problems:
            file.write(f"problem: {problem}\n")
        file.write("--- stdout\n" + stdout + "\n--- stderr\n" + stderr + "\n")
