"""qubesctl's command line: Qubes' options, ``--base-dir`` and ``--out``, then the Salt command.

Everything after the first word that is not an option (or the value of one) is
the Salt command with its arguments (``state.apply SLS test=True``); unknown
options before it (``--id=VM``, ``--id VM``, ``-l debug``) are Salt's and are
passed to ``salt-call`` unchanged, as Qubes does. Whether such an option takes
the next word as its value is Salt's own parser's word (``salt-call``'s), so
``--id VM`` never makes ``VM`` the command.
"""

from __future__ import annotations

import argparse
import functools

DEFAULT_CONCURRENCY = 4
OUTPUTS = ("highstate", "json", "nested", "yaml", "txt", "raw", "quiet")


def parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so the manual and tests can read it)."""
    p = argparse.ArgumentParser(
        prog="qubesctl", allow_abbrev=False,
        description="Apply Salt to dom0, then to the selected VMs through management DispVMs.")
    p.add_argument("--base-dir", help="installation directory (default: $QUBES_BASE_DIR, "
                   "else the production paths)")
    p.add_argument("--show-output", action="store_true",
                   help="print each target's Salt output, after a line 'TARGET:'")
    p.add_argument("--force-color", action="store_true", help="colour the Salt output")
    p.add_argument("--skip-dom0", action="store_true", help="do not run the command in dom0")
    p.add_argument("--targets", default="", help="comma-separated VMs to run the command in")
    p.add_argument("--templates", action="store_true", help="all TemplateVMs")
    p.add_argument("--standalones", action="store_true", help="all StandaloneVMs")
    p.add_argument("--app", action="store_true", help="all AppVMs")
    p.add_argument("--all", action="store_true",
                   help="all TemplateVMs, StandaloneVMs and AppVMs (and dom0)")
    p.add_argument("--max-concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"VMs configured at the same time (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--skip-top-check", action="store_true",
                   help="run in every selected VM, even those the top file gives nothing")
    p.add_argument("--dom0-only", action="store_true",
                   help="only run salt-call --local in dom0 (other options go to salt-call)")
    p.add_argument("--out", choices=OUTPUTS, default=None,
                   help="Salt's output format (json: one JSON document per target)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                   help="the Salt function and its arguments")
    return p


@functools.cache
def salt_value_options() -> frozenset[str]:
    """The options of ``salt-call`` that take a value (from Salt's own parser)."""
    from salt.utils.parsers import SaltCallOptionParser

    return frozenset(name for option in SaltCallOptionParser()._get_all_options()
                     if option.takes_value()
                     for name in (*option._short_opts, *option._long_opts))


def takes_value(p: argparse.ArgumentParser, word: str) -> bool:
    """Whether the option ``word`` takes the next word as its value."""
    if "=" in word or (not word.startswith("--") and len(word) > 2):
        return False  # the value is attached: --id=VM, -ldebug
    action = p._option_string_actions.get(word)
    if action is not None:
        return action.nargs != 0
    return word in salt_value_options()


def split(p: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``argv`` as (our options, Salt's options, the Salt command and its arguments)."""
    ours: list[str] = []
    salts: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            return ours, salts, argv[index + 1:]
        if not word.startswith("-") or word == "-":
            return ours, salts, argv[index:]
        name = word.split("=", 1)[0]
        where = ours if name in p._option_string_actions else salts
        where.append(word)
        if takes_value(p, word) and index + 1 < len(argv):
            index += 1
            where.append(argv[index])
        index += 1
    return ours, salts, []


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; ``salt_args`` are the options meant for Salt itself."""
    import sys

    p = parser()
    ours, salt_args, command = split(p, list(sys.argv[1:] if argv is None else argv))
    args = p.parse_args(ours)
    args.command = command
    args.salt_args = salt_args
    if not args.command:
        p.error("a Salt command is needed (e.g. state.highstate)")
    if args.max_concurrency < 1:
        p.error("--max-concurrency must be at least 1")
    if args.dom0_only and (args.targets or args.templates or args.standalones or args.app
                           or args.all or args.skip_dom0):
        p.error("--dom0-only does not take targets or --skip-dom0")
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    return args
