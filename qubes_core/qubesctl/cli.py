"""The ``qubesctl`` command: dom0, then the targets, a line per target, a summary, an exit code.

Invariant: whatever happens (a failed target, SIGINT, SIGTERM), the run ends
with its temporary policy lines removed, its management DispVMs destroyed and
the targets it started shut down, and its exit status is non-zero if anything
failed. Output goes to stdout (the ``TARGET: ...`` lines and, with
``--show-output``, each target's Salt output, which scripts parse); the
summary table goes to stderr.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.paths import Paths, resolve
from qubes_core.qubesctl import dom0, options, report, saltconf, targets

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

HIGHSTATE = ("state.highstate",)
INTERRUPTED = 130
MAX_PROBLEMS = 5  # per target on stderr; the log has them all


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop, clean up, exit non-zero."""


def is_highstate(command: list[str]) -> bool:
    """Whether the command applies the top file (the only case a top check decides)."""
    return command[0] in HIGHSTATE or (
        command[0] == "state.apply" and not [a for a in command[1:] if "=" not in a])


def log_path(paths: Paths, name: str) -> Path:
    """The log file of one target (``mgmt-NAME.log`` in the installation's log directory)."""
    return paths.log_dir / f"mgmt-{name}.log"


class Printer:
    """Writes each target's lines as it finishes, one target at a time."""

    def __init__(self, args: Any, opts: dict[str, Any] | None):
        self.args = args
        self.opts = opts or {}
        self.lock = threading.Lock()

    def finished(self, outcome: report.Outcome, function: str, salt_json: str) -> None:
        with self.lock:
            if self.args.show_output and not outcome.skipped:
                print(f"{outcome.target}:")
                print(self.rendered(function, salt_json))
            else:
                print(report.progress_line(outcome))
            sys.stdout.flush()
            for problem in outcome.problems[:MAX_PROBLEMS]:
                print(f"  {outcome.target}: {problem}", file=sys.stderr)

    def rendered(self, function: str, salt_json: str) -> str:
        returns = report.parse_json_output(salt_json)
        if returns is None:
            return salt_json.rstrip("\n")
        if self.args.out == "json":
            return salt_json.strip()
        return saltconf.display(returns, function, self.args.out, self.args.force_color,
                                self.opts)


def run_dom0_only(args: Any, paths: Paths, config: Path) -> int:
    """``--dom0-only``: salt-call with the same options; its output alone."""
    outcome, text = dom0.run(paths, config, args.command, args.salt_args,
                             log_path(paths, "dom0"))
    printer = Printer(args, saltconf.minion_opts(config))
    returns = report.parse_json_output(text)
    shown = printer.rendered(args.command[0], text) if returns is not None else text.rstrip()
    if shown:
        print(shown)
    for problem in outcome.problems[:MAX_PROBLEMS]:
        print(f"qubesctl: {problem}", file=sys.stderr)
    return outcome.exit_code


def quiet_salt_logging(paths: Paths) -> None:
    """Salt's in-process log lines (rendering pillars and tops) go to ``qubesctl.log``."""
    salt_log = logging.getLogger("salt")
    salt_log.propagate = False
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(paths.log_dir / "qubesctl.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    salt_log.addHandler(handler)


def run(args: Any) -> int:
    """A whole run; the exit status."""
    from qubes_core.client.app import connect

    paths = resolve(args.base_dir)
    quiet_salt_logging(paths)
    config = saltconf.config_dir(paths)
    # the embedded default serves the whole run; a relocated installation is made on first use
    with connect(args.base_dir, create=not paths.production) as app:
        if args.dom0_only:
            return run_dom0_only(args, paths, config)
        opts = saltconf.minion_opts(config)
        printer = Printer(args, opts)
        outcomes: list[report.Outcome] = []
        if not args.skip_dom0:
            outcome, text = dom0.run(paths, config, args.command, args.salt_args,
                                     log_path(paths, "dom0"))
            printer.finished(outcome, args.command[0], text)
            outcomes.append(outcome)
        # the VM list is read after dom0's states, which may have created VMs
        domains = {vm.name: vm.klass for vm in app.domains}
        chosen = targets.select(domains, args)
        if chosen:
            outcomes += run_targets(args, paths, app, opts, chosen, printer)
    if outcomes:
        print(report.summary_table(outcomes), file=sys.stderr)
    return report.exit_status(outcomes)


def run_targets(args: Any, paths: Paths, app: Qubes, opts: dict[str, Any],
                chosen: list[targets.Target], printer: Printer) -> list[report.Outcome]:
    """Configure the targets through management DispVMs, templates first."""
    from qubes_core.qubesctl import dispvm, render

    check = is_highstate(args.command) and not args.skip_top_check
    outcomes = []
    # Without a top check, no target waits for the others' pillars: they are rendered one
    # by one in a thread of their own while the first DispVMs start.
    renderer = ThreadPoolExecutor(max_workers=1)
    pillars: dict[str, Future[None]] = {}
    if check:
        render.prepare(opts, chosen, need_states=True)
        idle = [t for t in chosen if not t.states]
        for target in idle:
            outcome = report.Outcome(target.name, skipped="nothing in the top file")
            printer.finished(outcome, args.command[0], "")
            outcomes.append(outcome)
        chosen = [t for t in chosen if t.states]
    else:
        pillars = {t.name: renderer.submit(render.prepare, opts, [t], need_states=False)
                   for t in chosen}
    session = dispvm.Session(paths, app, opts, args.command, args.salt_args)
    for name in session.sweep():
        print(f"qubesctl: removed {name} and its policy lines, left by a run that was killed",
              file=sys.stderr)
    try:
        for batch in targets.batches(chosen):
            pool = ThreadPoolExecutor(max_workers=args.max_concurrency)
            futures: list[Future[tuple[report.Outcome, str]]] = []
            try:
                futures = [pool.submit(session.configure, target, log_path(paths, target.name),
                                       pillars.get(target.name))
                           for target in batch]
                for future in as_completed(futures):
                    outcome, text = future.result()
                    printer.finished(outcome, args.command[0], text)
                    outcomes.append(outcome)
            finally:
                # interrupted: end the DispVMs first, so that the workers' calls return
                if not all(f.done() for f in futures):
                    session.close()
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        renderer.shutdown(wait=True, cancel_futures=True)
        session.close()
    return outcomes


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """The ``qubesctl`` command."""
    args = options.parse(argv)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(args)
    except Interrupted as why:
        print(f"qubesctl: interrupted ({why}); cleaned up", file=sys.stderr)
        return INTERRUPTED
    except (exc.QubesException, ValueError, OSError) as error:
        print(f"qubesctl: {error}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
