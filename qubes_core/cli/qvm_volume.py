"""qvm-volume: the volumes of qubes: list, info, revisions, revert, resize, import, config.

A volume is named ``VM:VOLUME`` (e.g. ``work:private``). ``list`` prints
``POOL:VID  VMNAME  VOLUME_NAME  REVERT_POSSIBLE``; ``info VM:VOLUME [PROPERTY]`` the
volume's ``key  value`` lines (or the one value); ``revisions VM:VOLUME`` the
revisions ``revert`` can go back to, oldest first. ``import VM:VOLUME FILE|-``
replaces the contents of a halted qube's volume: the data is written into the
image qubesd hands out on its dom0-only socket (``internal.vm.volume.ImportBegin``)
and committed (``ImportEnd ok``) only once all of it is written and synced;
anything else discards it, so a failed import changes nothing. Progress shows on
a terminal only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from qubes_core.cli.common import (
    Progress,
    ToolError,
    get_vm,
    parse_size,
    print_table,
    run,
    tool_parser,
)

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

CHUNK = 1 << 20


def volume_spec(text: str) -> tuple[str, str]:
    """``VM:VOLUME`` -> (vm, volume)."""
    vm, sep, volume = text.partition(":")
    if not sep or not vm or not volume:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form VMNAME:VOLUME")
    return vm, volume


def parser() -> argparse.ArgumentParser:
    """qvm-volume's command line."""
    parser = tool_parser("qvm-volume", "Manage the volumes of qubes.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser("list", aliases=["ls"], help="list volumes")
    listing.add_argument("--pool", "-p", help="only volumes of this pool")
    listing.add_argument("domains", metavar="VMNAME", nargs="*",
                         help="only these qubes' volumes (default: all)")
    info = commands.add_parser("info", aliases=["i"], help="a volume's settings and usage")
    info.add_argument("volume", metavar="VMNAME:VOLUME", type=volume_spec)
    info.add_argument("property", metavar="PROPERTY", nargs="?", help="print only this one")
    revisions = commands.add_parser("revisions", help="the revisions revert can go back to")
    revisions.add_argument("volume", metavar="VMNAME:VOLUME", type=volume_spec)
    revert = commands.add_parser("revert", aliases=["rv", "r"],
                                 help="go back to a revision (default: the latest)")
    revert.add_argument("volume", metavar="VMNAME:VOLUME", type=volume_spec)
    revert.add_argument("revision", metavar="REVISION", nargs="?")
    resize = commands.add_parser("resize", aliases=["extend"], help="grow a volume")
    resize.add_argument("volume", metavar="VMNAME:VOLUME", type=volume_spec)
    resize.add_argument("size", metavar="SIZE", help="new size: bytes, or with K, M, G, T")
    imports = commands.add_parser("import", help="replace a volume's contents")
    imports.add_argument("--size", help="the image's size, needed when reading stdin")
    imports.add_argument("--no-resize", action="store_true",
                         help="refuse an image larger than the volume instead of growing it")
    imports.add_argument("volume", metavar="VMNAME:VOLUME", type=volume_spec)
    imports.add_argument("source", metavar="PATH", help="the image file, or - for stdin")
    config = commands.add_parser("config", aliases=["c", "set"], help="change a setting")
    config.add_argument("volume", metavar="VMNAME:VOLUME", type=volume_spec)
    config.add_argument("property", metavar="PROPERTY", choices=("revisions_to_keep", "rw"))
    config.add_argument("value", metavar="VALUE")
    return parser


def info_of(app: Qubes, vm: str, volume: str) -> dict[str, str]:
    """``admin.vm.volume.Info`` as a dict."""
    text = app.call("admin.vm.volume.Info", vm, volume)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def revisions_of(app: Qubes, vm: str, volume: str) -> list[str]:
    """The volume's revisions, oldest first."""
    return app.call("admin.vm.volume.ListSnapshots", vm, volume).split()


def volume_command(args: argparse.Namespace, app: Qubes) -> int:
    """Do what the command line asks."""
    command = {"ls": "list", "i": "info", "rv": "revert", "r": "revert", "extend": "resize",
               "c": "config", "set": "config"}.get(args.command, args.command or "list")
    if command == "list":
        return list_volumes(app, getattr(args, "domains", []), getattr(args, "pool", None))
    vm, volume = args.volume
    if command == "info":
        info = info_of(app, vm, volume)
        if args.property == "revisions":
            print("\n".join(revisions_of(app, vm, volume)))
        elif args.property:
            if args.property not in info:
                raise ToolError(f"volume {vm}:{volume} has no property {args.property!r}")
            print(info[args.property])
        else:
            print_table(sorted(info.items()))
    elif command == "revisions":
        for revision in revisions_of(app, vm, volume):
            print(revision)
    elif command == "revert":
        revision = args.revision
        if revision is None:
            revisions = revisions_of(app, vm, volume)
            if not revisions:
                raise ToolError(f"volume {vm}:{volume} has no revision to revert to")
            revision = revisions[-1]
        app.call("admin.vm.volume.Revert", vm, volume, revision)
    elif command == "resize":
        app.call("admin.vm.volume.Resize", vm, volume, str(parse_size(args.size)))
    elif command == "config":
        app.call(f"admin.vm.volume.Set.{args.property}", vm, volume, args.value)
    elif command == "import":
        import_image(app, args, vm, volume)
    return 0


def list_volumes(app: Qubes, names: list[str], pool: str | None) -> int:
    """The table of ``list``: one Info per volume."""
    vms = [get_vm(app, name) for name in names] if names else list(app.domains)
    rows = [["POOL:VOLUME", "VMNAME", "VOLUME_NAME", "REVERT_POSSIBLE"]]
    for vm in vms:
        for volume in app.call("admin.vm.volume.List", vm.name).split():
            info = info_of(app, vm.name, volume)
            if pool and info.get("pool") != pool:
                continue
            revertible = "Yes" if revisions_of(app, vm.name, volume) else "No"
            rows.append([f"{info.get('pool', '-')}:{info.get('vid', '-')}", vm.name, volume,
                         revertible])
    print_table(rows)
    return 0


def import_image(app: Qubes, args: argparse.Namespace, vm: str, volume: str) -> None:
    """Write the image into qubesd's import file; commit only a complete, synced copy."""
    from qubes_core.client.transport import Transport
    from qubes_core.paths import resolve

    if args.source == "-":
        if not args.size:
            raise ToolError("importing from stdin needs --size")
        size, stream = parse_size(args.size), sys.stdin.buffer
    else:
        try:
            size = os.stat(args.source).st_size
            stream = open(args.source, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise ToolError(f"cannot read {args.source}: {err.strerror}") from None
    try:
        current = int(info_of(app, vm, volume).get("size", "0"))
        if size > current and args.no_resize:
            raise ToolError(f"the image ({size} bytes) is larger than {vm}:{volume} "
                            f"({current} bytes) and --no-resize was given")
        internal = Transport(resolve(args.base_dir).internal_socket)
        path = internal.call_text("internal.vm.volume.ImportBegin", vm, volume,
                                  str(max(size, current)))
        ok = False
        try:
            copy_into(stream, path, size, Progress(f"importing {vm}:{volume}", size,
                                                   quiet=args.quiet))
            ok = True
        finally:
            internal.call("internal.vm.volume.ImportEnd", vm, volume, "ok" if ok else "fail")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def copy_into(stream: BinaryIO, path: str, size: int, progress: Progress) -> None:
    """Copy exactly ``size`` bytes of ``stream`` into ``path`` (sparse where zero), synced."""
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        while done < size:
            chunk = stream.read(min(CHUNK, size - done))
            if not chunk:
                raise ToolError(f"the image ended after {done} of {size} bytes")
            if chunk.count(0) != len(chunk):
                os.pwrite(fd, chunk, done)
            done += len(chunk)
            progress.update(done)
        os.fsync(fd)
    finally:
        os.close(fd)
        progress.finish()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-volume``."""
    return run(parser(), argv, volume_command)


if __name__ == "__main__":
    sys.exit(main())
