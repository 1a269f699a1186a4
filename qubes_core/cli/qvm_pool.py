"""qvm-pool: list, inspect, add, change and remove storage pools; migrate ``file`` pools.

``list`` prints ``NAME  DRIVER``; ``info POOL`` the pool's ``key  value`` lines;
``add POOL DRIVER -o KEY=VALUE,...``; ``set POOL -o revisions_to_keep=N``;
``remove POOL...``; ``drivers`` each driver with the options it takes.
``migrate`` moves ``file`` pools to ``file-reflink`` (the same work as
``qubes-pool-migrate``, which owns it); it edits qubes.xml directly, so it
refuses while a qubesd serves the installation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qubes_core.cli.common import (
    ToolError,
    fail,
    parse_key_values,
    print_table,
    run,
    tool_parser,
)

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

COMMANDS = {"list": "list", "ls": "list", "info": "info", "i": "info", "add": "add",
            "a": "add", "remove": "remove", "rm": "remove", "set": "set", "s": "set",
            "drivers": "drivers", "migrate": "migrate"}


def parser() -> argparse.ArgumentParser:
    """qvm-pool's command line."""
    parser = tool_parser("qvm-pool", "Manage storage pools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("list", aliases=["ls"], help="list the pools")
    info = commands.add_parser("info", aliases=["i"], help="show a pool's settings and usage")
    info.add_argument("pool", metavar="POOL")
    add = commands.add_parser("add", aliases=["a"], help="add a pool")
    add.add_argument("pool", metavar="POOL")
    add.add_argument("driver", metavar="DRIVER", help="e.g. file-reflink (see drivers)")
    add.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE,...",
                     help="a driver option, e.g. dir_path=/var/lib/pool")
    remove = commands.add_parser("remove", aliases=["rm"], help="remove pools (unused ones)")
    remove.add_argument("pools", metavar="POOL", nargs="+")
    change = commands.add_parser("set", aliases=["s"], help="change a pool's setting")
    change.add_argument("pool", metavar="POOL")
    change.add_argument("--option", "-o", action="append", default=[], required=True,
                        metavar="KEY=VALUE", help="revisions_to_keep=N")
    commands.add_parser("drivers", help="list the drivers and the options each takes")
    migrate = commands.add_parser(
        "migrate", help="move file pools to file-reflink (qubesd must be stopped)")
    migrate.add_argument("--pool", action="append", dest="pools", metavar="NAME",
                         help="pool to migrate (repeatable; default: every file pool)")
    migrate.add_argument("--setup-check", choices=("yes", "no"), default="yes",
                         help="'no' migrates even where the filesystem cannot reflink")
    migrate.add_argument("--dry-run", action="store_true", help="report, change nothing")
    return parser


def pool(args: argparse.Namespace, app: Qubes, tool: argparse.ArgumentParser) -> int:
    """Do what the command line asks (every command but migrate)."""
    command = COMMANDS.get(args.command or "list")
    if command == "list":
        rows = [["NAME", "DRIVER"]]
        for name in app.call("admin.pool.List").split():
            info = key_values(app.call("admin.pool.Info", "dom0", name))
            rows.append([name, info.get("driver", "-")])
        print_table(rows)
    elif command == "info":
        print_table(sorted(key_values(app.call("admin.pool.Info", "dom0", args.pool)).items()))
    elif command == "drivers":
        rows = [["DRIVER", "OPTIONS"]]
        for line in app.call("admin.pool.ListDrivers").splitlines():
            driver, *known = line.split()
            rows.append([driver, ", ".join(known)])
        print_table(rows)
    elif command == "add":
        options = parse_key_values(tool, args.option)
        payload = "".join(f"{key}={value}\n" for key, value in options.items())
        app.call("admin.pool.Add", "dom0", args.driver, f"name={args.pool}\n" + payload)
    elif command == "remove":
        for name in args.pools:
            app.call("admin.pool.Remove", "dom0", name)
    elif command == "set":
        options = parse_key_values(tool, args.option)
        for key, value in options.items():
            if key != "revisions_to_keep":
                raise ToolError(f"pool option {key!r} cannot be changed (only "
                                "revisions_to_keep)")
            app.call("admin.pool.Set.revisions_to_keep", "dom0", args.pool, value)
    return 0


def key_values(text: str) -> dict[str, str]:
    """``key=value`` lines as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def migrate(args: argparse.Namespace) -> int:
    """Run the migration of ``qubes_core.storage.migrate`` after checking qubesd is stopped."""
    from qubes_core.client.embedded import find_socket, listening
    from qubes_core.storage import migrate as migration

    if listening(find_socket(args.base_dir)):
        return fail("qvm-pool", "qubesd serves this installation: stop it first "
                    "(the migration edits qubes.xml itself)")
    argv = ["--setup-check", args.setup_check]
    if args.base_dir:
        argv += ["--base-dir", args.base_dir]
    for name in args.pools or []:
        argv += ["--pool", name]
    if args.dry_run:
        argv.append("--dry-run")
    return migration.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-pool``."""
    tool = parser()
    args = tool.parse_args(argv)
    if args.command == "migrate":
        return migrate(args)
    return run(tool, argv, lambda args, app: pool(args, app, tool))


if __name__ == "__main__":
    sys.exit(main())
