"""qvm-prefs and qubes-prefs: show and change the properties of a qube or of the system.

``qvm-prefs VM`` lists every property as ``NAME  D|-  VALUE`` (``D``: the value is
the default); ``qvm-prefs VM PROP`` prints the value alone (nothing for an unset
one) in one call, since scripts run it in loops; ``qvm-prefs VM PROP VALUE`` sets
it and ``--default`` resets it. ``qubes-prefs`` is the same for the global
properties. Both are one parser built by :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import sys

from qubes_core.cli.common import ToolError, print_table, tool_main, tool_parser

TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing (see cli.common)
if TYPE_CHECKING:
    from typing import Any

    from qubes_core.client.app import Qubes


def build_parser(prog: str, with_vm: bool) -> argparse.ArgumentParser:
    """The command line of ``qvm-prefs`` (``with_vm``) or ``qubes-prefs``."""
    what = "a qube" if with_vm else "the system"
    parser = tool_parser(prog, f"List, get or set the properties of {what}.")
    parser.add_argument("--help-properties", action="store_true",
                        help="list the properties and what each means, then exit")
    parser.add_argument("--hide-default", action="store_true",
                        help="when listing, leave out the properties at their default")
    parser.add_argument("--get-default", action="store_true",
                        help="print the value the property would have by default")
    parser.add_argument("--default", "-D", dest="reset", action="store_true",
                        help="reset the property to its default")
    if with_vm:
        parser.add_argument("domain", metavar="VMNAME", help="the qube")
    parser.add_argument("property", metavar="PROPERTY", nargs="?", help="the property")
    parser.add_argument("value", metavar="VALUE", nargs="?",
                        help="the new value (an empty string for none)")
    return parser


def text_of(value: Any) -> str:
    """A value as printed: empty for None."""
    return "" if value is None else str(value)


def prefs(args: argparse.Namespace, app: Qubes, parser: argparse.ArgumentParser) -> int:
    """Do what the command line asks on the holder (a VM, or the system)."""
    holder = app.domains.get_blind(args.domain) if hasattr(args, "domain") else app
    # Only a listing needs to know up front that the VM exists.
    if hasattr(args, "domain") and args.property is None and args.domain not in app.domains:
        raise ToolError(f"no such domain: {args.domain!r}")
    if args.help_properties:
        for name in holder.property_list():
            print(f"{name}\n    {holder.property_help(name)}")
        return 0
    if args.property is None:
        if args.reset or args.get_default:
            parser.error("--default and --get-default need a PROPERTY")
        return list_properties(holder, args.hide_default)
    if args.reset:
        if args.value is not None:
            parser.error("--default resets a property: give no VALUE")
        delattr(holder, args.property)
        return 0
    if args.get_default:
        print(text_of(holder.property_get_default(args.property)))
        return 0
    if args.value is not None:
        setattr(holder, args.property, args.value)
        return 0
    print(text_of(getattr(holder, args.property)))
    return 0


def list_properties(holder: Any, hide_default: bool) -> int:
    """``NAME  D|-  VALUE`` lines from one ``GetAll``."""
    with holder.app.cache():
        values = holder.property_get_all()
        defaults = {name for name in values if holder.property_is_default(name)}
    rows = [[name, "D" if name in defaults else "-", text_of(value)]
            for name, value in sorted(values.items())
            if not (hide_default and name in defaults)]
    print_table(rows)
    return 0


#: Entry point of ``qvm-prefs``.
main = tool_main(lambda: build_parser("qvm-prefs", with_vm=True), prefs)
#: Entry point of ``qubes-prefs``.
main_global = tool_main(lambda: build_parser("qubes-prefs", with_vm=False), prefs)


if __name__ == "__main__":
    sys.exit(main())
