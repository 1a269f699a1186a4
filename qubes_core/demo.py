"""``make demo``: build a small installation in a local base directory and show it.

Creates (or completes) dom0, a template, sys-net, sys-firewall and two AppVMs in
``./demo`` (``--base-dir`` or ``QUBES_BASE_DIR`` moves it), saves qubes.xml,
loads it again from disk and prints the VMs with their main properties.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from qubes_core import paths
from qubes_core.app import Qubes

DEMO_VMS: list[tuple[str, str, dict[str, Any]]] = [
    ("TemplateVM", "debian-12", {"label": "black"}),
    ("AppVM", "sys-net", {"label": "red", "provides_network": True, "netvm": None}),
    ("AppVM", "sys-firewall", {"label": "green", "provides_network": True,
                               "netvm": "sys-net"}),
    ("AppVM", "work", {"label": "blue"}),
    ("AppVM", "personal", {"label": "yellow"}),
]
COLUMNS = ("name", "class", "state", "label", "template", "netvm", "ip", "memory")


def build(app: Qubes) -> list[str]:
    """Create what is missing; return the names created."""
    created = []
    for vmclass, name, props in DEMO_VMS:
        if name in app.domains:
            continue
        props = dict(props)
        if "netvm" in props and isinstance(props["netvm"], str):
            props["netvm"] = app.domains[props["netvm"]]
        app.add_new_vm(vmclass, name=name, **props)
        created.append(name)
        if vmclass == "TemplateVM" and app.default_template is None:
            app.default_template = app.domains[name]
    if app.default_netvm is None:
        app.default_netvm = app.domains["sys-firewall"]
    if app.clockvm is None:
        app.clockvm = app.domains["sys-net"]
    app.domains["work"].features["service.cups"] = True
    app.domains["personal"].tags.add("personal")
    return created


def table(app: Qubes) -> str:
    rows = [COLUMNS]
    for vm in app.domains:
        rows.append((
            vm.name, vm.klass(), vm.get_power_state(), vm.label.name,
            getattr(getattr(vm, "template", None), "name", "-"),
            getattr(getattr(vm, "netvm", None), "name", "-"),
            getattr(vm, "ip", None) or "-",
            str(getattr(vm, "memory", "-")),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines[0] = lines[0].upper()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="installation directory (default ./demo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    where = paths.resolve(args.base_dir or os.environ.get(paths.ENV_VAR) or "demo")
    where.base_dir.mkdir(parents=True, exist_ok=True)
    if where.qubes_xml.exists():
        app = Qubes(where.qubes_xml)
    else:
        app = Qubes.create_empty_store(where.qubes_xml)
    with app:
        created = build(app)
        app.save()
    print(f"base directory: {where.base_dir}")
    print(f"created: {', '.join(created) if created else 'nothing (already there)'}")
    with Qubes(where.qubes_xml, lock=False) as reloaded:
        print(f"reloaded {where.qubes_xml}: {len(reloaded.domains)} VMs\n")
        print(table(reloaded))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
