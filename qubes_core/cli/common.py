"""What every ``qvm-*`` tool shares: its parser, how it finds the installation, how it fails.

A tool is ``main(argv) -> int`` built from :func:`tool_parser` and run through
:func:`run`: the installation comes from ``--base-dir``, else ``$QUBES_BASE_DIR``,
else the production paths, and a qubesd is started for the command when none
listens (the embedded default). Every failure is one line on stderr,
``PROG: error: MESSAGE``, and a non-zero exit (1 for a failed operation, 2 for
bad arguments as argparse does); the traceback only with ``--verbose``. Progress
is drawn only when stderr is a terminal, so piped output stays clean.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys

from qubes_core import exc

# typing.TYPE_CHECKING without loading typing: a tool's start-up is most of its cost,
# and these names are for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any, Protocol, TextIO

    from qubes_core.client.app import ClientVM, Qubes

    class ToolMain(Protocol):
        """A tool's entry point: the command line (``sys.argv[1:]`` by default) -> exit code."""

        def __call__(self, argv: Sequence[str] | None = None) -> int: ...

# The interpreter's exit ends with collections that walk every object the tool loaded
# (a few ms of a tool's run, memory the system takes back at once anyway): move them
# out of the collector's reach first. Registered first, so it runs last at exit.
atexit.register(gc.freeze)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ToolError(Exception):
    """A failure the tool itself detected: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def error_text(err: BaseException) -> str:
    """The message of an exception without the quotes ``KeyError`` puts around it."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    return str(err) or type(err).__name__


def terminal_columns() -> int:
    """The terminal's width as :func:`shutil.get_terminal_size` finds it (``$COLUMNS``,
    else standard output's terminal, else 80), without loading :mod:`shutil`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no stdout, closed, or not a terminal
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, the terminal measured by :func:`terminal_columns`.

    argparse makes a formatter for every ``add_argument``, and its own measures the
    terminal with :mod:`shutil`, which loads the compression modules: a cost to every
    run of a tool, though few print help.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


def tool_parser(prog: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A parser with the options every tool has (``--base-dir``, ``--verbose``, ``--quiet``)."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    parser = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    add_common_options(parser)
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--base-dir``, ``--verbose`` and ``--quiet`` on ``parser``."""
    parser.add_argument("--base-dir", metavar="DIR",
                        help="installation directory (default: $QUBES_BASE_DIR, else the "
                             "production paths)")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="more output; the traceback of an error")
    parser.add_argument("--quiet", "-q", action="count", default=0, help="less output")


def connect(args: argparse.Namespace) -> Any:
    """The client of the installation named on the command line; its first call starts
    a qubesd when none listens (when one does, the usual case, the embedded-qubesd
    machinery is not even imported: a tool's start-up is most of its cost)."""
    from qubes_core.client.app import Qubes

    return Qubes(getattr(args, "base_dir", None), start_on_call=True)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
        body: Callable[[argparse.Namespace, Any], int | None]) -> int:
    """Parse ``argv``, connect, run ``body(args, app)``; turn failures into one line."""
    args = parser.parse_args(argv)
    app = None
    try:
        app = connect(args)
        return body(args, app) or 0
    except ToolError as err:
        return fail(parser.prog, str(err), args, err.code)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): no message, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (exc.QubesException, exc.ProtocolError, exc.PermissionDenied, OSError) as err:
        return fail(parser.prog, error_text(err), args)
    finally:
        if app is not None:
            app.close()


def tool_main(build: Callable[[], argparse.ArgumentParser],
              body: Callable[[argparse.Namespace, Any, argparse.ArgumentParser], int | None]
              ) -> ToolMain:
    """A tool's entry point: build its parser, then :func:`run` ``body(args, app, parser)``."""
    def main(argv: Sequence[str] | None = None) -> int:
        parser = build()
        return run(parser, argv, lambda args, app: body(args, app, parser))
    return main


def fail(prog: str, message: str, args: argparse.Namespace | None = None,
         code: int = EXIT_FAILED) -> int:
    """Print ``PROG: error: MESSAGE`` (and the traceback when verbose); the exit code."""
    if args is not None and getattr(args, "verbose", False):
        import traceback

        traceback.print_exc()
        remote = getattr(sys.exc_info()[1], "remote_traceback", None)
        if remote:
            print(f"qubesd's traceback:\n{remote}", file=sys.stderr)
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"{prog}: error: {first_line}", file=sys.stderr)
    return code


def get_vm(app: Qubes, name: str) -> ClientVM:
    """The VM called ``name``; a :class:`ToolError` naming it when there is none."""
    if name not in app.domains:
        raise ToolError(f"no such domain: {name!r}")
    return app.domains[name]


def add_vm_selection(parser: argparse.ArgumentParser, *, allow_all: bool = True,
                     nargs: str = "*") -> None:
    """``VMNAME...`` with ``--all`` and ``--exclude`` as the reference's tools take them."""
    if allow_all:
        parser.add_argument("--all", action="store_true", dest="all_domains",
                            help="act on all qubes (dom0 excluded)")
        parser.add_argument("--exclude", action="append", default=[], metavar="EXCLUDE",
                            help="leave this qube out (with --all)")
    parser.add_argument("domains", metavar="VMNAME", nargs=nargs, help="qube name")


def selected_vms(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 app: Qubes) -> list[ClientVM]:
    """The VMs named, or all but dom0 and the excluded with ``--all``."""
    if getattr(args, "all_domains", False):
        if args.domains:
            parser.error("give qube names or --all, not both")
        excluded = set(args.exclude)
        missing = excluded - set(app.domains.keys())
        if missing:
            raise ToolError(f"no such domain: {sorted(missing)[0]!r}")
        return [vm for vm in app.domains if vm.name != "dom0" and vm.name not in excluded]
    if getattr(args, "exclude", None):
        parser.error("--exclude only goes with --all")
    if not args.domains:
        parser.error("give one or more qube names" + (" or --all" if hasattr(args, "all_domains")
                                                      else ""))
    return [get_vm(app, name) for name in args.domains]


def print_table(rows: Iterable[Sequence[str]], out: TextIO | None = None) -> None:
    """Columns aligned on the widest cell, two spaces apart, no trailing blanks."""
    cells_of = [[str(cell) for cell in row] for row in rows]
    if not cells_of:
        return
    widths = [max(len(row[i]) for row in cells_of if i < len(row))
              for i in range(len(cells_of[0]))]
    lines = []
    for row in cells_of:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + row[-1:]
        lines.append("  ".join(cells).rstrip() + "\n")
    (out or sys.stdout).write("".join(lines))


def parse_key_values(parser: argparse.ArgumentParser, items: Iterable[str],
                     what: str = "option") -> dict[str, str]:
    """``KEY=VALUE`` items (each may hold several, comma-separated) as a dict."""
    found: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key:
                parser.error(f"{what} {part!r} is not of the form KEY=VALUE")
            found[key.strip()] = value
    return found


class Progress:
    """A one-line progress display on stderr, drawn only when stderr is a terminal."""

    def __init__(self, what: str, total: int | None = None, stream: TextIO | None = None,
                 quiet: bool = False):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.what = what
        self.total = total
        self.done = 0

    def update(self, done: int, note: str = "") -> None:
        """Show that ``done`` units (bytes, steps) of ``total`` are done."""
        self.done = done
        if not self.enabled:
            return
        if self.total:
            text = f"{self.what}: {done * 100 // self.total:3d}% {human_size(done)}" \
                   f" of {human_size(self.total)}"
        else:
            text = f"{self.what}: {note or human_size(done)}"
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()

    def step(self, note: str) -> None:
        """Show a named step (e.g. the volume being copied)."""
        if self.enabled:
            self.stream.write(f"\r\x1b[K{self.what}: {note}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def parse_size(text: str) -> int:
    """``10G``, ``512MiB``, ``1048576`` -> bytes; a :class:`ToolError` for anything else."""
    units = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number = cleaned.rstrip("KMGT")
    unit = cleaned[len(number):]
    if not number.isdigit() or unit not in units:
        raise ToolError(f"invalid size {text!r}: use bytes or a number with K, M, G or T")
    return int(number) * units[unit]


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (a closed or odd stream is not)."""
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
