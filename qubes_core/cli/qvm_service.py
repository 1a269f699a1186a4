"""qvm-service: switch the services of a qube (the ``service.NAME`` features).

A service is on when its feature is set to a true value (``1``) and off when set
to the empty value; unset, the VM's own default applies. ``qvm-service VM`` lists
``NAME  on|off``; ``qvm-service VM NAME`` prints ``on`` or ``off`` (exit 1 when
unset); ``qvm-service VM NAME on|off`` or ``--enable``/``--disable``/``--unset NAME``
change it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from qubes_core.cli.common import ToolError, get_vm, print_table, tool_main, tool_parser
from qubes_core.cli.qvm_features import one_feature

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

PREFIX = "service."
TRUE_WORDS = ("1", "on", "true", "yes", "enable", "enabled")
FALSE_WORDS = ("0", "off", "false", "no", "disable", "disabled", "")
# The feature's value for each state a service is switched to.
FEATURE_VALUES = {"on": "1", "off": ""}


def parser() -> argparse.ArgumentParser:
    """qvm-service's command line."""
    parser = tool_parser("qvm-service", "List, enable, disable or unset the services of a "
                         "qube.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--enable", "-e", action="store_const", dest="action", const="on",
                        help="enable the service")
    action.add_argument("--disable", "-d", action="store_const", dest="action", const="off",
                        help="disable the service")
    action.add_argument("--unset", "--default", "-D", action="store_const", dest="action",
                        const="unset", help="remove the setting: the default applies")
    parser.add_argument("domain", metavar="VMNAME", help="the qube")
    parser.add_argument("service", metavar="SERVICE", nargs="?", help="the service")
    parser.add_argument("value", metavar="VALUE", nargs="?", help="on or off")
    return parser


def state_word(value: str) -> str:
    """A service feature's value as ``on`` or ``off``."""
    return "on" if value not in FALSE_WORDS else "off"


def service(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Do what the command line asks."""
    if args.service is None:
        if args.action:
            tool.error("--enable, --disable and --unset need a SERVICE")
        vm = get_vm(app, args.domain)
        rows = [[name[len(PREFIX):], state_word(value)] for name, value in
                sorted(vm.features.items()) if name.startswith(PREFIX)]
        print_table(rows)
        return 0
    vm = app.domains.get_blind(args.domain)
    feature = PREFIX + args.service
    action = args.action
    if args.value is not None:
        if action:
            tool.error("give either a VALUE or --enable/--disable/--unset")
        word = args.value.lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ToolError(f"invalid service value {args.value!r}: use on or off")
        action = "on" if word in TRUE_WORDS else "off"
    return one_feature(vm, feature, unset=action == "unset",
                       value=FEATURE_VALUES.get(action or ""), shown=state_word)


#: Entry point of ``qvm-service``.
main = tool_main(parser, service)


if __name__ == "__main__":
    sys.exit(main())
