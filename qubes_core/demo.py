"""``make demo``: the main job on a local installation, through a real qubesd.

Starts a qubesd for ``./demo`` (``--base-dir`` or ``QUBES_BASE_DIR`` moves it;
it is created on first use) on libvirt's test driver, then, as a client over
the Admin API socket: creates (or completes) a template, sys-net, sys-firewall
and two AppVMs with their volumes, sets the global defaults, a service and a
firewall rule that expires, starts ``work`` (which starts its netvm chain
first), prints the VMs with their main properties and states, shuts the VMs
down and stops qubesd. Run it again: it finds everything in place.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qubes_core import paths
from qubes_core.client import connect

DEMO_VMS: list[tuple[str, str, str, dict[str, str]]] = [
    # class, name, label, properties set after creation
    ("TemplateVM", "debian-12", "black", {}),
    ("AppVM", "sys-net", "red", {"provides_network": "True", "netvm": ""}),
    ("AppVM", "sys-firewall", "green", {"provides_network": "True", "netvm": "sys-net"}),
    ("AppVM", "work", "blue", {}),
    ("AppVM", "personal", "yellow", {}),
]
GLOBALS = {"default_template": "debian-12", "default_netvm": "sys-firewall",
           "clockvm": "sys-net"}
FIREWALL = "action=accept proto=tcp dstports=443 expire=+3600 comment=https for an hour\n" \
           "action=drop\n"
COLUMNS = ("name", "class", "state", "label", "template", "netvm", "ip", "memory")


def build(app: object) -> list[str]:
    """Create through the Admin API what is missing; return the names created."""
    created = []
    for vmclass, name, label, props in DEMO_VMS:
        if name in app.domains:
            continue
        template = "debian-12" if vmclass == "AppVM" else None
        vm = app.add_new_vm(vmclass, name, label, template=template)
        for key, value in props.items():
            setattr(vm, key, value)
        created.append(name)
    for key, value in GLOBALS.items():
        setattr(app, key, value)
    app.domains["work"].features["service.cups"] = "1"
    app.domains["personal"].tags.add("personal")
    app.call("admin.vm.firewall.Set", "work", payload=FIREWALL)
    return created


def _text(value: object) -> str:
    return "-" if value in (None, "") else str(value)


def table(app: object) -> str:
    """The VM table the demo prints: one aligned row per VM, read under one client cache."""
    rows = [tuple(column.upper() for column in COLUMNS)]
    with app.cache():
        for vm in app.domains:
            is_vm = vm.klass != "AdminVM"
            rows.append((
                vm.name, vm.klass, vm.get_power_state(), _text(vm.label),
                _text(getattr(vm, "template", None)) if vm.klass in ("AppVM", "DispVM")
                else "-",
                _text(vm.netvm) if is_vm else "-",
                _text(vm.ip) if is_vm else "-",
                _text(vm.memory) if is_vm else "-",
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                          strict=True)).rstrip()
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    """``make demo``: build the VMs through qubesd, start work, print the table, shut down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="installation directory (default ./demo)")
    parser.add_argument("--runtime", default="test",
                        help="runtime qubesd uses (default: libvirt's test driver)")
    args = parser.parse_args(argv)
    base = Path(args.base_dir or os.environ.get(paths.ENV_VAR) or "demo").absolute()
    where = paths.resolve(base)
    print(f"base directory: {where.base_dir}")
    with connect(base, runtime=args.runtime, create=True) as app:
        print(f"qubesd serving {where.admin_socket}")
        created = build(app)
        print(f"created through the Admin API: {', '.join(created) or 'nothing (all there)'}")
        work = app.domains["work"]
        if work.is_halted():
            work.start()
        print("started work (and its netvm chain); firewall of work:")
        print("".join("  " + line + "\n"
                      for line in app.call("admin.vm.firewall.Get", "work").splitlines()))
        print(table(app))
        for name in ("work", "sys-firewall", "sys-net"):
            vm = app.domains[name]
            if not vm.is_halted():
                vm.shutdown(wait=True)
        print("\nshut the VMs down; qubes.xml:", where.qubes_xml)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
