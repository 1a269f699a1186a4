"""qvm-features: list, get, set and unset the features of a qube.

``qvm-features VM`` prints ``NAME  VALUE`` lines; ``qvm-features VM NAME`` the value
alone, or nothing and exit 1 when the feature is not set (scripts test for it);
``qvm-features VM NAME VALUE`` sets it; ``--unset`` removes it (removing an unset
feature is not an error, as in the reference).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from qubes_core import exc
from qubes_core.cli.common import get_vm, print_table, tool_main, tool_parser

if TYPE_CHECKING:
    from qubes_core.client.app import ClientVM, Qubes


def parser() -> argparse.ArgumentParser:
    """qvm-features's command line."""
    parser = tool_parser("qvm-features", "List, get or set the features of a qube.")
    parser.add_argument("--unset", "--default", "--delete", "-D", dest="unset",
                        action="store_true", help="remove the feature")
    parser.add_argument("domain", metavar="VMNAME", help="the qube")
    parser.add_argument("feature", metavar="FEATURE", nargs="?", help="the feature")
    parser.add_argument("value", metavar="VALUE", nargs="?", help="the new value")
    return parser


def features(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Do what the command line asks."""
    if args.feature is None:
        if args.unset:
            tool.error("--unset needs a FEATURE")
        vm = get_vm(app, args.domain)
        print_table(sorted(vm.features.items()))
        return 0
    if args.unset and args.value is not None:
        tool.error("--unset takes no VALUE")
    return one_feature(app.domains.get_blind(args.domain), args.feature, unset=args.unset,
                       value=args.value)


def one_feature(vm: ClientVM, name: str, *, unset: bool = False, value: str | None = None,
                shown: Callable[[str], str] = str) -> int:
    """Remove the feature ``name`` (``unset``: not an error when it is not set), set it to
    ``value``, or else print it as ``shown`` words it; the exit code (1: printing one
    that is not set). ``qvm-service`` shares it."""
    if unset:
        try:
            del vm.features[name]
        except exc.QubesFeatureNotFoundError:
            pass
    elif value is not None:
        vm.features[name] = value
    else:
        try:
            print(shown(vm.features[name]))
        except exc.QubesFeatureNotFoundError:
            return 1
    return 0


#: Entry point of ``qvm-features``.
main = tool_main(parser, features)


if __name__ == "__main__":
    sys.exit(main())
