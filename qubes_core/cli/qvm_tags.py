"""qvm-tags: list, add and remove the tags of a qube.

``qvm-tags VM`` (or ``list``) prints the tags one a line; ``qvm-tags VM list TAG``
prints the tag and exits 0 when the qube has it, else exits 1 silently (scripts
test for it); ``add TAG...`` and ``del TAG...`` change them (removing a tag the
qube does not have is an error, naming the tag).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from qubes_core.cli.common import ToolError, get_vm, tool_main, tool_parser

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

COMMANDS = {"list": "list", "ls": "list", "l": "list", "add": "add", "set": "add", "a": "add",
            "del": "del", "d": "del", "unset": "del", "u": "del", "rm": "del"}


def parser() -> argparse.ArgumentParser:
    """qvm-tags's command line."""
    parser = tool_parser("qvm-tags", "List, add or remove the tags of a qube.")
    parser.add_argument("domain", metavar="VMNAME", help="the qube")
    parser.add_argument("command", metavar="COMMAND", nargs="?", default="list",
                        choices=sorted(COMMANDS),
                        help="list (the default), add or del")
    parser.add_argument("tags", metavar="TAG", nargs="*", help="the tags")
    return parser


def tags(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Do what the command line asks."""
    vm = get_vm(app, args.domain)
    command = COMMANDS[args.command]
    if command == "list":
        if len(args.tags) > 1:
            tool.error("list takes at most one TAG")
        present = sorted(vm.tags)
        if args.tags:
            if args.tags[0] not in present:
                return 1
            present = args.tags
        for tag in present:
            print(tag)
        return 0
    if not args.tags:
        tool.error(f"{command} needs at least one TAG")
    if command == "add":
        for tag in args.tags:
            vm.tags.add(tag)
        return 0
    have = set(vm.tags)
    missing = [tag for tag in args.tags if tag not in have]
    if missing:
        raise ToolError(f"{vm.name} has no tag {missing[0]!r}")
    for tag in args.tags:
        vm.tags.remove(tag)
    return 0


#: Entry point of ``qvm-tags``.
main = tool_main(parser, tags)


if __name__ == "__main__":
    sys.exit(main())
