"""qvm-clone: copy a qube under a new name, with its volumes, features, tags and firewall.

The copy is made over the Admin API: ``Create`` (or ``CreateInPool`` with ``-P``) of
the same class, template and label; the source's properties that are not at their
default (less those that name one qube: name, qid, uuid, ip, ...); its features,
tags and firewall rules; then each volume the source keeps (``save_on_stop``) by
``volume.CloneFrom``/``CloneTo``. Any failure removes the half-made copy, so the
command either makes the whole clone or leaves nothing. Progress (the volume being
copied) shows on a terminal only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.cli.common import Progress, ToolError, error_text, get_vm, run, tool_parser

if TYPE_CHECKING:
    from qubes_core.client.app import ClientVM, Qubes

# Properties that belong to one qube only, or that Create itself takes.
NOT_COPIED = frozenset({"name", "qid", "uuid", "xid", "stubdom_xid", "dispid", "ip", "ip6",
                        "visible_ip", "visible_ip6", "start_time", "backup_timestamp",
                        "auto_cleanup", "label", "template", "debug"})


def parser() -> argparse.ArgumentParser:
    """qvm-clone's command line."""
    parser = tool_parser("qvm-clone", "Copy a qube under a new name.")
    parser.add_argument("-P", dest="pool", metavar="POOL",
                        help="the pool of the copy's volumes (default: the default pool)")
    parser.add_argument("--class", "-C", dest="cls", help="the copy's class (default: the "
                        "source's)")
    parser.add_argument("source", metavar="VMNAME", help="the qube to copy")
    parser.add_argument("name", metavar="NEWVM", help="the copy's name")
    return parser


def volume_info(app: Qubes, vm: str, volume: str) -> dict[str, str]:
    """``admin.vm.volume.Info`` as a dict."""
    text = app.call("admin.vm.volume.Info", vm, volume)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def clone(args: argparse.Namespace, app: Qubes) -> int:
    """Make the copy; remove it again if any step fails."""
    source = get_vm(app, args.source)
    if args.name in app.domains:
        raise ToolError(f"a qube named {args.name!r} already exists")
    with app.cache():
        values = source.property_get_all()
        defaults = {name for name in values if source.property_is_default(name)}
        klass = args.cls or source.klass
    template = values.get("template")
    copy = app.add_new_vm(klass, args.name, str(values["label"]),
                          template=str(template) if template else None, pool=args.pool)
    progress = Progress(f"cloning {source.name} to {args.name}", quiet=args.quiet)
    try:
        copy_settings(app, source, copy, values, defaults)
        for volume in app.call("admin.vm.volume.List", source.name).split():
            if volume_info(app, source.name, volume).get("save_on_stop") != "True":
                continue
            progress.step(f"volume {volume}")
            token = app.call("admin.vm.volume.CloneFrom", source.name, volume)
            app.call("admin.vm.volume.CloneTo", copy.name, volume, token)
    except BaseException as err:
        progress.finish()
        try:
            app.remove_vm(copy.name)
        except exc.QubesException:
            pass
        if isinstance(err, exc.QubesException):
            raise ToolError(f"{error_text(err)} (nothing was cloned)") from err
        raise
    progress.finish()
    return 0


def copy_settings(app: Qubes, source: ClientVM, copy: ClientVM, values: dict[str, Any],
                  defaults: set[str]) -> None:
    """Properties (those set on the source), features, tags and firewall rules."""
    for name, value in sorted(values.items()):
        if name in NOT_COPIED or name in defaults:
            continue
        setattr(copy, name, value)
    for feature, value in source.features.items():
        copy.features[feature] = value
    for tag in source.tags:
        if not tag.startswith("created-by-"):
            copy.tags.add(tag)
    try:
        rules = app.call("admin.vm.firewall.Get", source.name)
    except exc.QubesVMError:
        return  # a qube without network has no firewall
    app.call("admin.vm.firewall.Set", copy.name, "", rules)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qvm-clone``."""
    return run(parser(), argv, clone)


if __name__ == "__main__":
    sys.exit(main())
