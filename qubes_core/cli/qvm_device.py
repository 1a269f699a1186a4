"""qvm-device (and qvm-pci, qvm-block, qvm-usb): list, assign and attach devices.

``qvm-device CLASS COMMAND ...``; run as ``qvm-pci``, ``qvm-block`` or ``qvm-usb``
the class is implied, as in Qubes. Commands: ``list [VMNAME]`` (``BACKEND:PORT
DESCRIPTION USED BY``), ``assign VMNAME BACKEND:PORT[:DEVICE_ID]`` (from the qube's
next start; ``--required``, ``--ask``, ``-o KEY=VALUE``), ``unassign``, ``attach``
and ``detach`` (now, while it runs), ``info VMNAME BACKEND:PORT``.

The wire format is Qubes 4.4's: reply lines start with ``PORT:DEVICE_ID``
(``Available``) or ``BACKEND+PORT:DEVICE_ID`` (``Assigned``/``Attached``) followed by
``key='value'`` words (a quote escaped by a backslash); requests name a device as
``BACKEND+PORT+DEVICE_ID`` (``*``, any device in the port, written ``_``) with the
assignment in the same ``key='value'`` form. PCI assignments default to ``required``
(a PCI device cannot come and go), others to ``auto-attach``. A qubesd without the
4.4 methods (no ``Attached``) gets the older plain ``key=value`` options. A class
that no qubesd method serves is reported as such (no backend offers it here), not
as an error of the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qubes_core import exc
from qubes_core.cli.common import (
    ToolError,
    get_vm,
    parse_key_values,
    print_table,
    run,
    tool_parser,
)

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

CLASSES = ("pci", "block", "usb", "mic")
PROGRAM_CLASS = {"qvm-pci": "pci", "qvm-block": "block", "qvm-usb": "usb"}


def quote(value: str) -> str:
    """A value in the 4.4 form: single quotes, quote and backslash escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_words(text: str) -> dict[str, str]:
    """``key='v a l' key2=plain`` -> dict (4.4 quoted values, or older plain ones)."""
    fields: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq]
        i = eq + 1
        if i < n and text[i] == "'":
            i += 1
            value = []
            while i < n and text[i] != "'":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
            i += 1
            fields[key] = "".join(value)
        else:
            end = text.find(" ", i)
            end = n if end < 0 else end
            fields[key] = text[i:end]
            i = end
    return fields


def parse_line(line: str) -> tuple[str, dict[str, str]]:
    """A reply line -> (its first word, its fields)."""
    head, _, rest = line.partition(" ")
    return head, parse_words(rest)


def device_spec(text: str) -> tuple[str, str, str]:
    """``BACKEND:PORT[:DEVICE_ID]`` -> (backend, port, device_id; ``*`` when not given)."""
    backend, sep, rest = text.partition(":")
    port, _, device_id = rest.partition(":")
    if not sep or not backend or not port:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form BACKEND:PORT")
    return backend, port, device_id or "*"


def parser(prog: str) -> argparse.ArgumentParser:
    """The command line of qvm-device, or of qvm-pci/qvm-block/qvm-usb (class implied)."""
    implied = PROGRAM_CLASS.get(prog)
    what = f"{implied} devices" if implied else "devices"
    parser = tool_parser(prog, f"List, assign and attach {what}.")
    if not implied:
        parser.add_argument("devclass", metavar="CLASS", choices=CLASSES,
                            help="device class: " + ", ".join(CLASSES))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser("list", aliases=["ls", "l"],
                                  help="list the devices (of one qube's use, if named)")
    listing.add_argument("domain", metavar="VMNAME", nargs="?")
    for name, text in (("assign", "assign a device from the qube's next start"),
                       ("attach", "attach a device to the running qube now")):
        sub = commands.add_parser(name, aliases=[name[:2]], help=text)
        sub.add_argument("domain", metavar="VMNAME")
        sub.add_argument("device", metavar="BACKEND:PORT[:DEVICE_ID]", type=device_spec)
        sub.add_argument("--option", "-o", action="append", default=[],
                         metavar="KEY=VALUE", help="a device option")
        sub.add_argument("--ro", action="store_true", help="read-only (block devices)")
        if name == "assign":
            mode = sub.add_mutually_exclusive_group()
            mode.add_argument("--required", dest="mode", action="store_const",
                              const="required", help="the qube does not start without it")
            mode.add_argument("--ask", "--ask-to-attach", dest="mode", action="store_const",
                              const="ask-to-attach", help="ask before attaching it")
    for name, text in (("unassign", "remove an assignment"),
                       ("detach", "detach a device from the running qube")):
        sub = commands.add_parser(name, aliases=[name[:3] if name == "detach" else "u"],
                                  help=text)
        sub.add_argument("domain", metavar="VMNAME")
        sub.add_argument("device", metavar="BACKEND:PORT[:DEVICE_ID]", type=device_spec)
    info = commands.add_parser("info", aliases=["i"], help="everything known of a device")
    info.add_argument("device", metavar="BACKEND:PORT", type=device_spec)
    return parser


class DeviceApi:
    """The ``admin.vm.device.CLASS.*`` calls of one class, in the format qubesd speaks."""

    def __init__(self, app: Qubes, devclass: str):
        self.app = app
        self.devclass = devclass
        self._wire_44: bool | None = None

    def call(self, method: str, vm: str, arg: str = "", payload: str = "") -> str:
        full = f"admin.vm.device.{self.devclass}.{method}"
        try:
            return self.app.call(full, vm, arg, payload)
        except exc.ProtocolError as err:
            if "no such method" in str(err):
                raise ToolError(f"no backend offers {self.devclass} devices here (qubesd has "
                                f"no {self.devclass} device support)") from None
            raise

    def wire_44(self, vm: str) -> bool:
        """Whether qubesd speaks the 4.4 device format (it has ``Attached``)."""
        if self._wire_44 is None:
            try:
                self.call("Attached", vm)
                self._wire_44 = True
            except ToolError:
                self._wire_44 = False
        return self._wire_44

    def available(self, backend: str) -> list[tuple[str, dict[str, str]]]:
        """(port, fields) of each device ``backend`` offers (``PORT:DEVICE_ID`` heads)."""
        found = []
        for line in self.call("Available", backend).splitlines():
            head, fields = parse_line(line)
            found.append((head.split(":", 1)[0], fields))
        return found

    def used(self, vm: str, what: str) -> list[tuple[str, dict[str, str]]]:
        """``Assigned`` or ``Attached`` lines of ``vm`` (none where the method is missing)."""
        try:
            return [parse_line(line) for line in self.call(what, vm).splitlines()]
        except ToolError:
            if what == "Attached":
                return []
            raise

    def assignment_arg(self, vm: str, device: tuple[str, str, str]) -> str:
        """The method argument naming the device (``:`` and ``*`` are not argument chars)."""
        backend, port, device_id = device
        if not self.wire_44(vm):
            return f"{backend}+{port}"
        return f"{backend}+{port}+{device_id.replace('*', '_')}"

    def assignment_payload(self, vm: str, device: tuple[str, str, str], mode: str,
                           options: dict[str, str]) -> str:
        backend, port, device_id = device
        if not self.wire_44(vm):
            return " ".join(f"{key}={value}" for key, value in options.items())
        fields = {"device_id": device_id, "port_id": port, "devclass": self.devclass,
                  "backend_domain": backend, "mode": mode, "frontend_domain": vm}
        fields.update({f"_{key}": value for key, value in options.items()})
        return " ".join(f"{key}={quote(value)}" for key, value in fields.items())


def port_of(head: str) -> str:
    """``BACKEND+PORT:ID`` or ``PORT`` -> ``BACKEND:PORT`` / ``PORT``."""
    backend, sep, rest = head.partition("+")
    return f"{backend}:{rest.split(':', 1)[0]}" if sep else head


def description(fields: dict[str, str]) -> str:
    """What a user recognises a device by."""
    for key in ("product", "name", "description"):
        if fields.get(key) and fields[key] != "unknown":
            product = fields[key]
            break
    else:
        product = f"unknown {fields.get('devclass', '')} device".replace("  ", " ")
    vendor = fields.get("vendor") or fields.get("manufacturer")
    return f"{product} ({vendor})" if vendor and vendor != "unknown" else product


def device_command(args: argparse.Namespace, app: Qubes, devclass: str) -> int:
    """Do what the command line asks."""
    api = DeviceApi(app, devclass)
    command = {"ls": "list", "l": "list", "as": "assign", "at": "attach", "u": "unassign",
               "det": "detach", "i": "info"}.get(args.command, args.command or "list")
    if command == "list":
        return list_devices(api, app, getattr(args, "domain", None))
    if command == "info":
        backend, port, _ = args.device
        for head, fields in api.available(backend):
            if head == port:
                print_table([["port", f"{backend}:{port}"], *sorted(fields.items())])
                return 0
        raise ToolError(f"{backend} offers no {devclass} device {port!r}")
    vm = get_vm(app, args.domain).name
    arg = api.assignment_arg(vm, args.device)
    if command in ("assign", "attach"):
        options = parse_key_values(argparse.ArgumentParser(prog=args.prog), args.option,
                                   "option")
        if args.ro:
            options["read-only"] = "True"
        default = "required" if devclass == "pci" else "auto-attach"
        mode = (args.mode or default) if command == "assign" else "manual"
        api.call("Assign" if command == "assign" else "Attach", vm, arg,
                 api.assignment_payload(vm, args.device, mode, options))
    else:
        api.call("Unassign" if command == "unassign" else "Detach", vm, arg)
    return 0


def list_devices(api: DeviceApi, app: Qubes, frontend: str | None) -> int:
    """``BACKEND:PORT  DESCRIPTION  USED BY``: every backend's devices, or one qube's."""
    vms = [vm.name for vm in app.domains]
    users: dict[str, list[str]] = {}
    for vm in vms:
        for what, label in (("Assigned", None), ("Attached", "attached")):
            for head, fields in api.used(vm, what):
                mode = label or fields.get("mode") or "assigned"
                users.setdefault(port_of(head), []).append(f"{vm} ({mode})")
    rows = [["BACKEND:DEVID", "DESCRIPTION", "USED BY"]]
    offered = set()
    for backend in vms:
        for head, fields in api.available(backend):
            name = f"{backend}:{head}"
            offered.add(name)
            if frontend and not any(u.startswith(frontend + " ") for u in users.get(name, [])):
                continue
            rows.append([name, description(fields), ", ".join(users.get(name, []))])
    for name, used_by in sorted(users.items()):
        if name not in offered and (not frontend or any(u.startswith(frontend + " ")
                                                        for u in used_by)):
            rows.append([name, "(not present)", ", ".join(used_by)])
    print_table(rows)
    if not offered and not users:
        print(f"no backend offers {api.devclass} devices here", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-device``."""
    return main_as("qvm-device", argv)


def main_as(prog: str, argv: Sequence[str] | None = None) -> int:
    """Run as ``prog`` (the class is implied by qvm-pci, qvm-block and qvm-usb)."""
    tool = parser(prog)

    def body(args: argparse.Namespace, app: Qubes) -> int:
        args.prog = prog
        return device_command(args, app, PROGRAM_CLASS.get(prog) or args.devclass)
    return run(tool, argv, body)


def main_pci(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-pci``."""
    return main_as("qvm-pci", argv)


def main_block(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-block``."""
    return main_as("qvm-block", argv)


def main_usb(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-usb``."""
    return main_as("qvm-usb", argv)


if __name__ == "__main__":
    sys.exit(main())
