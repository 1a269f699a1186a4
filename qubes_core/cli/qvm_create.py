"""qvm-create: create a new qube.

``qvm-create [--class CLASS] [--template T] --label L [--property NAME=VALUE]...
[-P POOL | --pool [VOLUME:]POOL]... NAME``. The qube is created by one
``admin.vm.Create`` (or ``CreateInPool``) call; the properties are set after it,
and if one is refused the new qube is removed again, so a failed command leaves
nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from qubes_core.cli.common import ToolError, error_text, parse_key_values, tool_main, tool_parser

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes


def parser() -> argparse.ArgumentParser:
    """qvm-create's command line."""
    parser = tool_parser("qvm-create", "Create a new qube.")
    parser.add_argument("--class", "-C", dest="cls", default="AppVM",
                        help="the qube's class (default: AppVM)")
    parser.add_argument("--standalone", action="store_const", dest="cls",
                        const="StandaloneVM", help="shorthand for --class StandaloneVM")
    parser.add_argument("--disp", action="store_const", dest="cls", const="DispVM",
                        help="shorthand for --class DispVM")
    parser.add_argument("--template", "-t", help="the template (default: the system's)")
    parser.add_argument("--label", "-l", required=True, help="the label (colour)")
    parser.add_argument("--property", "--prop", action="append", default=[],
                        metavar="NAME=VALUE", help="set a property of the new qube")
    parser.add_argument("-P", dest="pool", metavar="POOL",
                        help="the pool of all the qube's volumes")
    parser.add_argument("--pool", "-p", dest="pools", action="append", default=[],
                        metavar="VOLUME:POOL",
                        help="the pool of one volume (e.g. private:fast)")
    parser.add_argument("name", metavar="VMNAME", help="the new qube's name")
    return parser


def create(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Create the qube, then set its properties (removing it again if one is refused)."""
    properties = parse_key_values(tool, args.property, "property")
    pools = {}
    for item in args.pools:
        volume, sep, pool = item.partition(":")
        if not sep or not volume or not pool:
            tool.error(f"--pool {item!r} is not of the form VOLUME:POOL")
        pools[volume] = pool
    if args.pool and pools:
        tool.error("give -P POOL or --pool VOLUME:POOL, not both")
    if args.name in app.domains:
        raise ToolError(f"a qube named {args.name!r} already exists")
    vm = app.add_new_vm(args.cls, args.name, args.label, template=args.template,
                        pool=args.pool, pools=pools or None)
    try:
        for name, value in properties.items():
            setattr(vm, name, value)
    except Exception as err:
        app.remove_vm(args.name)
        raise ToolError(f"property {name!r}: {error_text(err)} (qube not created)") from err
    return 0


#: Entry point of ``qvm-create``.
main = tool_main(parser, create)


if __name__ == "__main__":
    sys.exit(main())
