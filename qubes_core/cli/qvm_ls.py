"""qvm-ls: list qubes and their properties.

Invariant: one ``admin.vm.List`` for the names, classes and states, and at most one
``admin.vm.property.GetAll`` per listed VM, only when a property column is shown
(``--raw-list`` and the state filters need none). Listing from a VM over qrexec
once cost a call per cell; that is what this avoids.

Output as the reference's: a table with a header; ``--raw-data`` the same cells
joined by ``|`` without a header (scripts parse it); ``--raw-list`` the names
only. An empty or unset value shows as ``-``.
"""

from __future__ import annotations

import argparse
import sys

from qubes_core.cli.common import ToolError, print_table, tool_main, tool_parser

TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing (see cli.common)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from qubes_core.client.app import ClientVM, Qubes

FORMATS = {
    "simple": ("name", "state", "class", "label", "template", "netvm"),
    "network": ("name", "state", "netvm", "ip", "ipback", "gateway"),
    "kernel": ("name", "state", "class", "template", "kernel", "kernelopts"),
    "full": ("name", "state", "class", "label", "qid", "xid", "uuid"),
    "prefs": ("name", "label", "template", "netvm", "default_dispvm", "memory", "maxmem",
              "vcpus"),
}
# Columns that come from admin.vm.List rather than from the VM's properties.
LISTED_COLUMNS = ("name", "state", "class")
STATE_FILTERS = {"running": ("Running", "Transient"), "paused": ("Paused", "Suspended"),
                 "halted": ("Halted",)}


def parser() -> argparse.ArgumentParser:
    """qvm-ls's command line."""
    parser = tool_parser("qvm-ls", "List qubes and some of their properties.")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--format", "-o", choices=sorted(FORMATS), default="simple",
                       help="a preset list of columns (default: simple)")
    shape.add_argument("--fields", "-O", metavar="FIELD,...",
                       help="the columns to show, comma-separated (e.g. name,state,label)")
    parser.add_argument("--help-columns", action="store_true",
                        help="list the columns that can be shown, then exit")
    raw = parser.add_mutually_exclusive_group()
    raw.add_argument("--raw-data", action="store_true",
                     help="cells separated by '|', no header (for scripts)")
    raw.add_argument("--raw-list", action="store_true", help="only the names, one a line")
    parser.add_argument("--all", action="store_true", dest="all_domains",
                        help="list all qubes (the default)")
    parser.add_argument("--exclude", action="append", default=[], metavar="EXCLUDE",
                        help="leave this qube out")
    for name, states in STATE_FILTERS.items():
        parser.add_argument(f"--{name}", action="store_true",
                            help=f"only qubes that are {name} ({', '.join(states)})")
    parser.add_argument("--tags", nargs="+", metavar="TAG",
                        help="only qubes with at least one of these tags")
    parser.add_argument("--class", dest="classes", action="append", metavar="CLASS",
                        help="only qubes of this class (AppVM, TemplateVM, ...)")
    parser.add_argument("domains", metavar="VMNAME", nargs="*", help="only these qubes")
    return parser


def columns_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The column names to show, lower case."""
    if args.fields:
        fields = [field.strip().lower() for field in args.fields.split(",") if field.strip()]
        if not fields:
            parser.error("--fields needs at least one column name")
        return fields
    return list(FORMATS[args.format])


def cell(value: Any) -> str:
    """A property value as a cell: ``-`` for None or empty."""
    if value is None or value == "":
        return "-"
    return str(value)


def listed(app: Qubes, args: argparse.Namespace) -> list[Any]:
    """The VMs to show, from one ``admin.vm.List`` (tags cost one call per VM)."""
    vms = list(app.domains)
    names = {vm.name for vm in vms}
    for name in list(args.domains) + list(args.exclude):
        if name not in names:
            raise ToolError(f"no such domain: {name!r}")
    if args.domains:
        wanted = set(args.domains)
        vms = [vm for vm in vms if vm.name in wanted]
    excluded = set(args.exclude)
    states = [state for name, group in STATE_FILTERS.items() if getattr(args, name)
              for state in group]
    if states:
        vms = [vm for vm in vms if vm.get_power_state() in states]
    if args.classes:
        vms = [vm for vm in vms if vm.klass in args.classes]
    if args.tags:
        wanted_tags = set(args.tags)
        vms = [vm for vm in vms if wanted_tags & set(vm.tags)]
    return [vm for vm in vms if vm.name not in excluded]


def row_of(vm: ClientVM, columns: Sequence[str], properties: dict[str, Any]) -> list[str]:
    """One VM's cells."""
    row = []
    for column in columns:
        if column == "name":
            row.append(vm.name)
        elif column == "state":
            row.append(vm.get_power_state().upper())
        elif column == "class":
            row.append(vm.klass)
        else:
            row.append(cell(properties.get(column)))
    return row


def list_vms(args: argparse.Namespace, app: Qubes, parser: argparse.ArgumentParser) -> int:
    """Print the table (or raw data / raw list) of the selected VMs."""
    with app.cache():
        if args.help_columns:
            return help_columns(app)
        vms = listed(app, args)
        if args.raw_list:
            for vm in vms:
                print(vm.name)
            return 0
        columns = columns_of(args, parser)
        wanted = [column for column in columns if column not in LISTED_COLUMNS]
        known: set[str] = set(LISTED_COLUMNS)
        rows = []
        for vm in vms:
            properties = vm.property_get_some(wanted) if wanted else {}
            known.update(properties)
            rows.append(row_of(vm, columns, properties))
    unknown = [column for column in columns if column not in known]
    if unknown and args.fields:  # a preset may name what this system lacks
        # Only now, on the way to an error, ask what every class of qube has.
        known.update(property_names(app))
        unknown = [column for column in unknown if column not in known]
        if unknown:
            raise ToolError(f"unknown column {unknown[0]!r} (see qvm-ls --help-columns)")
    if args.raw_data:
        sys.stdout.write("".join("|".join(row) + "\n" for row in rows))
        return 0
    print_table([[column.upper() for column in columns]] + rows)
    return 0


def property_names(app: Qubes) -> set[str]:
    """The property names of every class of qube present (one call per class)."""
    names: set[str] = set()
    seen_classes: set[str] = set()
    for vm in app.domains:
        if vm.klass not in seen_classes:
            seen_classes.add(vm.klass)
            names.update(vm.property_list())
    return names


def help_columns(app: Qubes) -> int:
    """Print the columns: those of the listing, then every VM property name."""
    print("\n".join(sorted(set(LISTED_COLUMNS) | property_names(app))))
    return 0


#: Entry point of ``qvm-ls``.
main = tool_main(parser, list_vms)


if __name__ == "__main__":
    sys.exit(main())
