"""``qvm-run``: run a command (or a qrexec service) in a VM, from dom0.

The call goes through qubesd's dom0 qrexec socket (the sandbox runtime's router),
which starts the VM first unless ``--no-autostart``; dom0's calls are not subject
to the qrexec policy, as on Qubes. A command line runs through ``qubes.VMShell``
(bash reads it as the first line of its input; with ``--pass-io`` our stdin
follows). Exit code: the remote command's, or 126 when the call was refused
(no such VM, not running with ``--no-autostart``), 2 for bad usage.

What the VM writes is untrusted: with ``--pass-io`` its stdout has every byte
that is not printable ASCII (or tab, newline, carriage return, backspace, bell)
replaced by ``_`` when our stdout is a terminal or ``--filter-escape-chars`` is
given (``--no-filter-escape-chars`` turns it off), and its stderr when our
stderr is a terminal or the filter was asked for, as Qubes does, so a VM
cannot drive the dom0 terminal with escape sequences.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading

from qubes_core.agent import calls, wire


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """qvm-run's command line; VMNAME is absent with ``--dispvm``."""
    parser = argparse.ArgumentParser(prog="qvm-run", description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="installation directory (default: "
                        "$QUBES_BASE_DIR, else the production paths)")
    parser.add_argument("--user", "-u", default=None, help="run as this user in the VM")
    parser.add_argument("--autostart", "--auto", "-a", action="store_true",
                        help="ignored: the VM is started by default")
    parser.add_argument("--no-autostart", "--no-auto", "-n", action="store_true",
                        help="do not start the VM; fail if it is not running")
    parser.add_argument("--pass-io", "-p", action="store_true",
                        help="pass stdin, stdout and stderr to and from the command")
    parser.add_argument("--service", action="store_true",
                        help="COMMAND is a qrexec service name (SERVICE[+ARG])")
    parser.add_argument("--no-shell", action="store_true",
                        help="run COMMAND as a program even without ARGS")
    parser.add_argument("--dispvm", nargs="?", const="", default=None, metavar="BASE_APPVM",
                        help="run in a new DispVM of BASE_APPVM (default: default_dispvm)")
    parser.add_argument("--filter-escape-chars", action="store_true", dest="filter_esc",
                        default=None, help="replace terminal escape characters in the VM's "
                        "output (default when the output is a terminal)")
    parser.add_argument("--no-filter-escape-chars", action="store_false", dest="filter_esc",
                        help="pass the VM's output unfiltered (DANGEROUS on a terminal)")
    parser.add_argument("vm_and_command", nargs=argparse.REMAINDER,
                        metavar="[VMNAME] COMMAND [ARGS]")
    args = parser.parse_args(argv)
    if args.filter_esc is None:
        args.filter_esc = os.isatty(1)
    rest = list(args.vm_and_command)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.dispvm is None:
        if len(rest) < 2:
            parser.error("a VM name and a command are needed")
        args.vm, rest = rest[0], rest[1:]
    else:
        if not rest:
            parser.error("a command is needed")
        args.vm = "@dispvm:" + args.dispvm if args.dispvm else "@dispvm"
    if rest and rest[0] == "--":
        rest = rest[1:]
    args.command, args.args = rest[0], rest[1:]
    if args.service and args.args:
        parser.error("--service takes a service name, not arguments")
    return args


def shell_line(args: argparse.Namespace) -> bytes:
    """What ``qubes.VMShell`` reads first: the command as a group, then ``exit`` (parsed
    together, before the command runs: whatever follows is the command's own input; a
    command ending in ``&`` or a comment still parses)."""
    command = shlex.join([args.command, *args.args]) if args.args or args.no_shell else args.command
    return f"{{ {command}\n}}; exit\n".encode()


# Printable ASCII, tab, newline, carriage return, backspace and bell pass; the rest is "_".
SAFE = {*range(0x20, 0x7F), *b"\t\n\r\b\a"}
ESCAPE_FILTER = bytes(byte if byte in SAFE else ord("_") for byte in range(256))


def filter_escapes(data: bytes) -> bytes:
    """``data`` with every byte that could drive a terminal replaced by ``_``."""
    return data.translate(ESCAPE_FILTER)


class Filtered:
    """A pipe whose reader copies to ``dest`` through :func:`filter_escapes`."""

    def __init__(self, dest: int):
        self.read_end, self.write_end = os.pipe()
        self.copier = threading.Thread(target=self._copy, args=(dest,), daemon=True)
        self.copier.start()

    def _copy(self, dest: int) -> None:
        with os.fdopen(self.read_end, "rb", buffering=0) as source:
            while data := source.read(65536):
                view = memoryview(filter_escapes(data))
                try:
                    while view:
                        view = view[os.write(dest, view):]
                except OSError:
                    return

    def finish(self) -> None:
        """The call is over: our write end goes, the copier drains what is left."""
        os.close(self.write_end)
        self.copier.join()


def _feed(write_end: int, first: bytes, follow: int | None) -> None:
    try:
        os.write(write_end, first)
        if follow is not None:
            while True:
                data = os.read(follow, 65536)
                if not data:
                    break
                os.write(write_end, data)
    except OSError:
        pass
    finally:
        os.close(write_end)


def main(argv: list[str] | None = None) -> int:
    """The ``qvm-run`` command."""
    from qubes_core.paths import resolve

    args = parse_args(argv)
    path = str(resolve(args.base_dir).qrexec_socket)
    request = {"op": "call", "target": args.vm, "autostart": not args.no_autostart,
               "user": args.user,
               "service": args.command if args.service else "qubes.VMShell"}
    null = os.open(os.devnull, os.O_RDWR)
    filters: list[Filtered] = []
    try:
        out = 1 if args.pass_io else null
        err = 2 if args.pass_io else null
        if args.pass_io and args.filter_esc:
            filters.append(Filtered(1))
            out = filters[-1].write_end
        if args.pass_io and (args.filter_esc or os.isatty(2)):
            filters.append(Filtered(2))
            err = filters[-1].write_end
        return _call(args, path, request, null, out, err)
    finally:
        for output in filters:
            output.finish()
        os.close(null)


def _call(args: argparse.Namespace, path: str, request: dict, null: int, out: int, err: int
          ) -> int:
    if args.service:
        return calls.call(lambda: wire.connect(path), request,
                          stdin=0 if args.pass_io else null, stdout=out, stderr=err)
    read_end, write_end = os.pipe()
    threading.Thread(target=_feed, daemon=True,
                     args=(write_end, shell_line(args), 0 if args.pass_io else None)).start()
    try:
        return calls.call(lambda: wire.connect(path), request, stdin=read_end,
                          stdout=out, stderr=err)
    finally:
        os.close(read_end)


if __name__ == "__main__":
    sys.exit(main())
