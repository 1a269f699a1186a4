"""qvm-check: whether qubes exist, tool_main, are paused, are templates or have network.

Exit 0 when every named qube passes the check, 1 otherwise (a qube that does not
exist fails every check), so scripts can test with it; the answer is also printed
as ``NAMES: exists``/``is running``/... unless ``--quiet``. One ``admin.vm.List``
answers existence, state and class; ``--networked`` reads each qube's netvm.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from qubes_core.cli.common import tool_main, tool_parser

if TYPE_CHECKING:
    from qubes_core.client.app import ClientVM, Qubes

CHECKS = {
    "running": ("is running", "are running", "is not running", "are not running"),
    "paused": ("is paused", "are paused", "is not paused", "are not paused"),
    "template": ("is a template", "are templates", "is not a template", "are not templates"),
    "networked": ("is networked", "are networked", "is not networked", "are not networked"),
}
EXISTS = ("exists", "exist", "does not exist", "do not exist")


def parser() -> argparse.ArgumentParser:
    """qvm-check's command line."""
    parser = tool_parser("qvm-check", "Check whether qubes exist, tool_main, are paused, are "
                         "templates or have network; exit 0 if all do.")
    check = parser.add_mutually_exclusive_group()
    for name in CHECKS:
        check.add_argument(f"--{name}", dest="check", action="store_const", const=name,
                           help=f"check whether the qubes {CHECKS[name][1].split(' ', 1)[1]}")
    parser.add_argument("--all", action="store_true", dest="all_domains",
                        help="check all qubes (dom0 excluded)")
    parser.add_argument("--exclude", action="append", default=[], metavar="EXCLUDE",
                        help="leave this qube out (with --all)")
    parser.add_argument("domains", metavar="VMNAME", nargs="*", help="qube name")
    return parser


def passes(vm: ClientVM, check: str | None) -> bool:
    """Whether an existing qube passes ``check`` (None: existence)."""
    if check == "running":
        return vm.get_power_state() in ("Running", "Transient")
    if check == "paused":
        return vm.get_power_state() in ("Paused", "Suspended")
    if check == "template":
        return vm.klass == "TemplateVM"
    if check == "networked":
        return getattr(vm, "netvm", None) is not None
    return True


def say(names: list[str], words: tuple[str, str], quiet: bool) -> None:
    """Print ``NAMES: WORDS`` (singular or plural) unless quiet or no names."""
    if names and not quiet:
        print(f"{', '.join(names)}: {words[0] if len(names) == 1 else words[1]}")


def check(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Print the answer; 0 if every qube passes."""
    with app.cache():
        existing = set(app.domains.keys())
        if args.all_domains:
            if args.domains:
                tool.error("give qube names or --all, not both")
            names = sorted(existing - {"dom0"} - set(args.exclude))
        else:
            if not args.domains:
                tool.error("give one or more qube names or --all")
            names = list(args.domains)
        missing = [name for name in names if name not in existing]
        good = [name for name in names if name not in missing
                and passes(app.domains[name], args.check)]
        bad = [name for name in names if name not in missing and name not in good]
    words = CHECKS[args.check] if args.check else EXISTS
    say(good, words[:2], args.quiet)
    say(bad, words[2:], args.quiet)
    say(missing, EXISTS[2:], args.quiet)
    return 0 if names and not bad and not missing else 1


#: Entry point of ``qvm-check``.
main = tool_main(parser, check)


if __name__ == "__main__":
    sys.exit(main())
