"""qvm-start, qvm-shutdown, qvm-kill, qvm-pause and qvm-unpause: a qube's power state.

Each acts on the named qubes (or ``--all``), reports each refusal as one line
naming the qube and the reason, goes on with the others, and exits 1 if any was
refused. ``qvm-start --skip-if-running`` and ``qvm-shutdown`` of a halted qube
are not errors.

``qvm-shutdown`` asks in waves: a netvm that a running qube still uses is refused,
so the qubes that use it are asked first; with ``--all`` (or ``--wait``) it waits,
on qubesd's event stream (not by polling), until the wave is off before asking the
next one, and ``--wait`` returns only once every qube is off (``--timeout``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from qubes_core import exc
from qubes_core.cli.common import (
    ToolError,
    add_vm_selection,
    error_text,
    selected_vms,
    tool_main,
    tool_parser,
)

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

HALTED_STATES = ("Halted", "Crashed")
DEFAULT_TIMEOUT = 60.0

ACTIONS = {
    "qvm-start": ("Start qubes.", "start", ("Running", "Transient")),
    "qvm-kill": ("Stop qubes at once, without asking the system inside.", "kill",
                 HALTED_STATES),
    "qvm-pause": ("Pause running qubes (they stay in memory).", "pause", ("Paused",)),
    "qvm-unpause": ("Let paused qubes run again.", "unpause", ("Running",)),
}


def action_parser(prog: str) -> argparse.ArgumentParser:
    """The command line of qvm-start, qvm-kill, qvm-pause or qvm-unpause."""
    description = ACTIONS[prog][0]
    parser = tool_parser(prog, description)
    if prog == "qvm-start":
        parser.add_argument("--skip-if-running", action="store_true",
                            help="a qube that already runs is not an error")
    add_vm_selection(parser)
    return parser


def act(prog: str, tool: argparse.ArgumentParser, args: argparse.Namespace, app: Qubes) -> int:
    """Call the action on each selected qube; 1 if any refused."""
    _, action, _ = ACTIONS[prog]
    vms = selected_vms(tool, args, app)
    code = 0
    for vm in vms:
        if getattr(args, "skip_if_running", False) and vm.is_running():
            continue
        try:
            getattr(vm, action)()
        except exc.QubesException as err:
            print(f"{prog}: error: {vm.name}: {error_text(err)}", file=sys.stderr)
            code = 1
    return code


def make_main(prog: str) -> Callable[[Sequence[str] | None], int]:
    """The entry point of one of the ACTIONS tools."""
    return tool_main(lambda: action_parser(prog),
                     lambda args, app, tool: act(prog, tool, args, app))


main_start = make_main("qvm-start")
main_kill = make_main("qvm-kill")
main_pause = make_main("qvm-pause")
main_unpause = make_main("qvm-unpause")


def shutdown_parser() -> argparse.ArgumentParser:
    """qvm-shutdown's command line."""
    parser = tool_parser("qvm-shutdown", "Shut qubes down gracefully.")
    parser.add_argument("--wait", action="store_true",
                        help="return only once every qube is off")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"how long --wait waits (default: {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--force", action="store_true",
                        help="shut a netvm down even if running qubes use it")
    add_vm_selection(parser)
    return parser


class HaltWatch:
    """The qubes that stopped since the watch began, from qubesd's event stream."""

    def __init__(self, app: Qubes):
        self.app = app
        self.halted: set[str] = set()
        self.changed = threading.Condition()
        self.connected = threading.Event()
        self.failure: BaseException | None = None
        self.stream = app.events()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        if not self.connected.wait(DEFAULT_TIMEOUT) and self.failure is None:
            raise ToolError("qubesd's event stream did not start")
        if self.failure is not None:
            raise self.failure

    def _read(self) -> None:
        try:
            for subject, event, _ in self.stream:
                if event == "connection-established":
                    self.connected.set()
                elif event in ("domain-shutdown", "domain-stopped"):
                    with self.changed:
                        self.halted.add(subject)
                        self.changed.notify_all()
        except BaseException as err:  # reported by wait()
            self.failure = err
        finally:
            self.connected.set()
            with self.changed:
                self.changed.notify_all()

    def wait(self, names: set[str], deadline: float) -> set[str]:
        """Wait until all ``names`` stopped or the deadline; those still running."""
        with self.changed:
            while True:
                left = names - self.halted
                if not left or self.failure is not None:
                    return left
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return left
                self.changed.wait(remaining)


def shutdown(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Shut the selected qubes down in waves; 1 if any was refused or did not stop."""
    vms = selected_vms(tool, args, app)
    pending = [vm.name for vm in vms if vm.get_power_state() not in HALTED_STATES]
    waiting = args.wait or len(pending) > 1
    watch = HaltWatch(app) if waiting and pending else None
    deadline = time.monotonic() + args.timeout
    errors: dict[str, str] = {}
    asked: set[str] = set()
    while pending:
        wave, refused = [], []
        for name in pending:
            try:
                app.domains.get_blind(name).shutdown(force=args.force)
                wave.append(name)
            except (exc.QubesVMInUseError, exc.QubesVMError) as err:
                if isinstance(err, exc.QubesVMNotStartedError):
                    continue  # stopped meanwhile
                refused.append(name)
                errors[name] = error_text(err)
        asked.update(wave)
        if not refused or not wave or watch is None:
            for name in refused:
                print(f"{tool.prog}: error: {name}: {errors[name]}", file=sys.stderr)
            if refused:
                return finish(tool, watch, asked if args.wait else set(), deadline) or 1
            break
        late = watch.wait(set(wave), deadline)
        if late:
            print(f"{tool.prog}: error: did not shut down in time: {', '.join(sorted(late))}",
                  file=sys.stderr)
            return 1
        pending = refused
    return finish(tool, watch, asked if args.wait else set(), deadline)


def finish(tool: argparse.ArgumentParser, watch: HaltWatch | None, names: set[str],
           deadline: float) -> int:
    """Wait for ``names`` to stop (when asked to wait); 1 if some did not in time."""
    if watch is None or not names:
        return 0
    late = watch.wait(names, deadline)
    if watch.failure is not None and late:
        raise ToolError(f"lost qubesd's event stream: {error_text(watch.failure)}")
    if late:
        print(f"{tool.prog}: error: did not shut down in time: {', '.join(sorted(late))}",
              file=sys.stderr)
        return 1
    return 0


#: Entry point of ``qvm-shutdown``.
main_shutdown = tool_main(shutdown_parser, shutdown)


if __name__ == "__main__":
    sys.exit(main_shutdown())
