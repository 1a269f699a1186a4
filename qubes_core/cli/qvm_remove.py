"""qvm-remove: remove qubes, with their volumes.

Asks for confirmation unless ``--force`` (the answer is read from stdin; no
answer is no). A qube that is running or that others still use is refused by
qubesd with the reason; the other named qubes are still removed and the exit
code is 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from qubes_core import exc
from qubes_core.cli.common import (
    add_vm_selection,
    error_text,
    selected_vms,
    tool_main,
    tool_parser,
)

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes


def parser() -> argparse.ArgumentParser:
    """qvm-remove's command line."""
    parser = tool_parser("qvm-remove", "Remove qubes and their volumes.")
    parser.add_argument("--force", "-f", action="store_true", help="do not ask")
    add_vm_selection(parser)
    return parser


def confirmed(names: list[str]) -> bool:
    """Whether the user answers yes (from stdin)."""
    print("This will completely remove the selected qube(s):", file=sys.stderr)
    for name in names:
        print(f"  {name}", file=sys.stderr)
    print("Are you sure? [N/y] ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def remove(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Remove each selected qube; 1 if any was refused."""
    vms = selected_vms(tool, args, app)
    if not args.force and not confirmed([vm.name for vm in vms]):
        print(f"{tool.prog}: nothing removed", file=sys.stderr)
        return 1
    code = 0
    for vm in vms:
        try:
            app.remove_vm(vm.name)
        except exc.QubesException as err:
            print(f"{tool.prog}: error: {vm.name}: {error_text(err)}", file=sys.stderr)
            code = 1
    return code


#: Entry point of ``qvm-remove``.
main = tool_main(parser, remove)


if __name__ == "__main__":
    sys.exit(main())
