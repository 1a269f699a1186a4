"""``qvm-run``: run a command (or a qrexec service) in a VM, from dom0.

The call goes through qubesd's dom0 qrexec socket (the sandbox runtime's router),
which starts the VM first unless ``--no-autostart``; dom0's calls are not subject
to the qrexec policy, as on Qubes. A command line runs through ``qubes.VMShell``
(bash reads it as the first line of its input; with ``--pass-io`` our stdin
follows). Exit code: the remote command's, or 126 when the call was refused
(no such VM, not running with ``--no-autostart``), 2 for bad usage.
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
    parser.add_argument("vm_and_command", nargs=argparse.REMAINDER,
                        metavar="[VMNAME] COMMAND [ARGS]")
    args = parser.parse_args(argv)
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
    from qubes_core.backend.sandbox.router import dom0_socket
    from qubes_core.paths import resolve

    args = parse_args(argv)
    path = str(dom0_socket(resolve(args.base_dir)))
    request = {"op": "call", "target": args.vm, "autostart": not args.no_autostart,
               "user": args.user,
               "service": args.command if args.service else "qubes.VMShell"}
    null = os.open(os.devnull, os.O_RDWR)
    try:
        out = 1 if args.pass_io else null
        err = 2 if args.pass_io else null
        if args.service:
            return calls.call(lambda: wire.connect(path), request,
                              stdin=0 if args.pass_io else null, stdout=out, stderr=err)
        read_end, write_end = os.pipe()
        threading.Thread(target=_feed, daemon=True,
                         args=(write_end, shell_line(args), 0 if args.pass_io else None)
                         ).start()
        try:
            return calls.call(lambda: wire.connect(path), request, stdin=read_end,
                              stdout=out, stderr=err)
        finally:
            os.close(read_end)
    finally:
        os.close(null)


if __name__ == "__main__":
    sys.exit(main())
