"""qubesctl's command line: Qubes' options, ``--base-dir`` and ``--out``, then the Salt command.

Everything after the first word that is not one of our options is the Salt
command with its arguments (``state.apply SLS test=True``); unknown options
before it (``--id=VM``, ``-l debug``) are Salt's and are passed to
``salt-call`` unchanged, as Qubes does.
"""

from __future__ import annotations

import argparse

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


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; ``salt_args`` are the options meant for Salt itself."""
    p = parser()
    args, unknown = p.parse_known_args(argv)
    salt_args = [a for a in unknown if a.startswith("-")]
    # an unknown word before the command's own words starts the command
    words = [a for a in unknown if not a.startswith("-")]
    args.command = words + list(args.command)
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
