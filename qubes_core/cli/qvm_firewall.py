"""qvm-firewall: a qube's outbound firewall rules: list, add, del, reset.

Rules are given as ``key=value`` words (``action=accept dsthost=example.com
proto=tcp dstports=443 expire=+3600 comment=...``); a first bare word ``accept`` or
``drop`` is the action. ``expire`` is ``+SECONDS`` from now, seconds since the
epoch, or a date (``2026-12-01``, ``2026-12-01T18:00``, local time). Every change
reads the list (``firewall.Get``), edits it and writes the whole list back
(``firewall.Set``), which qubesd checks as a whole: a bad rule changes nothing.
``list`` prints a numbered table; ``--raw`` prints the API text form, one rule a line.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qubes_core.cli.common import ToolError, print_table, run, tool_parser

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

COLUMNS = (("action", "ACTION"), ("dsthost", "HOST"), ("proto", "PROTOCOL"),
           ("dstports", "PORT(S)"), ("specialtarget", "SPECIAL TARGET"),
           ("icmptype", "ICMP TYPE"), ("expire", "EXPIRE"), ("comment", "COMMENT"))
FIELD_ORDER = [name for name, _ in COLUMNS]


def parser() -> argparse.ArgumentParser:
    """qvm-firewall's command line."""
    parser = tool_parser("qvm-firewall", "Manage a qube's outbound firewall rules.")
    parser.add_argument("--reload", "-r", action="store_true",
                        help="re-read the rules and apply them again")
    parser.add_argument("--raw", action="store_true", help="list in the API text form")
    parser.add_argument("domain", metavar="VMNAME", help="the qube")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("list", aliases=["ls"], help="list the rules (the default)")
    add = commands.add_parser("add", help="add a rule (at the end, or --before N)")
    add.add_argument("--before", type=int, metavar="N", help="insert before rule number N")
    add.add_argument("rule", metavar="RULE", nargs="+",
                     help="action=accept|drop [dsthost=H] [proto=P] [dstports=N[-M]] "
                          "[icmptype=T] [specialtarget=dns] [expire=+S|DATE] [comment=...]")
    delete = commands.add_parser("del", aliases=["rm"], help="remove a rule")
    delete.add_argument("--rule-no", type=int, metavar="N", help="the rule's number")
    delete.add_argument("rule", metavar="RULE", nargs="*", help="the rule, as given to add")
    commands.add_parser("reset", help="back to the default: allow everything")
    return parser


def parse_expire(value: str) -> str:
    """``+N`` stays relative (qubesd resolves it); a date becomes seconds since the epoch."""
    if value.startswith("+") or value.isdigit():
        return value
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ToolError(f"invalid expire {value!r}: use +SECONDS, seconds since the epoch "
                        "or a date such as 2026-12-01T18:00") from None
    return str(int(moment.timestamp()))


def rule_text(words: Sequence[str]) -> str:
    """The API text form of a rule given as command-line words."""
    words = list(words)
    fields: dict[str, str] = {}
    if words and "=" not in words[0]:
        fields["action"] = words.pop(0)
    comment_at = next((i for i, word in enumerate(words) if word.startswith("comment=")), None)
    if comment_at is not None:
        fields["comment"] = " ".join(words[comment_at:])[len("comment="):]
        words = words[:comment_at]
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ToolError(f"rule word {word!r} is not KEY=VALUE")
        if key in fields:
            raise ToolError(f"rule field {key!r} given twice")
        fields[key] = parse_expire(value) if key == "expire" else value
    if "action" not in fields:
        raise ToolError("a rule needs an action (accept or drop)")
    ordered = sorted(fields, key=lambda k: FIELD_ORDER.index(k) if k in FIELD_ORDER else 99)
    return " ".join(f"{key}={fields[key]}" for key in ordered)


def parse_rule(line: str) -> dict[str, str]:
    """An API text line as a dict (``comment`` takes the rest of the line)."""
    head, sep, comment = line.partition("comment=")
    fields = dict(word.split("=", 1) for word in head.split() if "=" in word)
    if sep:
        fields["comment"] = comment
    return fields


def expire_cell(value: str | None) -> str:
    """An expiry (seconds since the epoch) as a local date, ``-`` for none."""
    if not value:
        return "-"
    moment = datetime.datetime.fromtimestamp(int(value))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def firewall(args: argparse.Namespace, app: Qubes) -> int:
    """Do what the command line asks."""
    vm = args.domain
    rules = app.call("admin.vm.firewall.Get", vm).splitlines()
    command = {"ls": "list", "rm": "del"}.get(args.command, args.command or "list")
    if command == "list":
        if args.raw:
            for line in rules:
                print(line)
        else:
            rows = [["NO", *(title for _, title in COLUMNS)]]
            for number, line in enumerate(rules):
                fields = parse_rule(line)
                cells = [expire_cell(fields.get(name)) if name == "expire"
                         else fields.get(name) or "-" for name, _ in COLUMNS]
                rows.append([str(number), *cells])
            print_table(rows)
    elif command == "add":
        text = rule_text(args.rule)
        position = len(rules) if args.before is None else args.before
        if not 0 <= position <= len(rules):
            raise ToolError(f"no rule number {position} (there are {len(rules)})")
        rules.insert(position, text)
        set_rules(app, vm, rules)
    elif command == "del":
        if (args.rule_no is None) == (not args.rule):
            raise ToolError("give either --rule-no N or the RULE")
        if args.rule_no is not None:
            if not 0 <= args.rule_no < len(rules):
                raise ToolError(f"no rule number {args.rule_no} (there are {len(rules)})")
            del rules[args.rule_no]
        else:
            wanted = parse_rule(rule_text(args.rule))
            matches = [i for i, line in enumerate(rules) if parse_rule(line) == wanted]
            if not matches:
                raise ToolError("no such rule")
            del rules[matches[0]]
        set_rules(app, vm, rules)
    elif command == "reset":
        set_rules(app, vm, ["action=accept"])
    if args.reload:
        app.call("admin.vm.firewall.Reload", vm)
    return 0


def set_rules(app: Qubes, vm: str, rules: list[str]) -> None:
    """Replace the qube's whole rule list (qubesd checks all before changing any)."""
    app.call("admin.vm.firewall.Set", vm, "", "".join(line + "\n" for line in rules))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-firewall``."""
    return run(parser(), argv, firewall)


if __name__ == "__main__":
    sys.exit(main())
