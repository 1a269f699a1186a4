"""PCI device methods: Available, Assigned, Assign, Unassign.

``Available`` lists the PCI devices of the destination (the backend domain).
dom0's devices are read from ``/sys/bus/pci/devices`` of the machine qubesd
runs on, one line each: ``BB_DD.F description=VVVV:PPPP class=0xCCCCCC``. A VM
owns no host PCI device, so its list is empty. The device class is part of the
method name; only ``pci`` exists for now.

``Assigned`` lists ``BACKEND+IDENT key=value ...``; ``Assign+BACKEND+IDENT``
takes options as ``key=value`` payload; ``Unassign+BACKEND+IDENT`` removes one.
An assignment is kept in qubes.xml and applies at the VM's next start.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.api.untrusted import parse_key_values
from qubes_core.devices import DeviceAssignment

SYSFS_PCI = Path("/sys/bus/pci/devices")
SYSFS_NAME_RE = re.compile(r"^0000:([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
# Options of the reference that mean "persistent", which every assignment here is.
PERSISTENT_KEYS = ("persistent",)


def _read_attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def host_pci_devices(root: Path | None = None) -> list[tuple[str, str]]:
    """``(ident, description)`` of each PCI device of this machine (domain 0000)."""
    root = root if root is not None else SYSFS_PCI
    found = []
    try:
        names = sorted(entry.name for entry in root.iterdir())
    except OSError:
        return []
    for name in names:
        match = SYSFS_NAME_RE.match(name)
        if not match:
            continue
        ident = f"{match.group(1)}_{match.group(2)}.{match.group(3)}"
        vendor = _read_attr(root / name / "vendor").removeprefix("0x")
        product = _read_attr(root / name / "device").removeprefix("0x")
        klass = _read_attr(root / name / "class")
        found.append((ident, f"description={vendor}:{product} class={klass}"))
    return found


def _split_device(call: ApiCall) -> tuple[Any, str]:
    backend_name, sep, ident = call.arg.partition("+")
    if not sep or not ident:
        raise exc.QubesValueError(
            f"{call.method}: argument must be BACKEND+DEVICE, like dom0+00_1f.2")
    backend = call.app.domains[backend_name]
    return backend, ident


@method("admin.vm.device.pci.Available", scope="local", read=True, argument=True,
        argument_optional=True)
async def pci_available(call: ApiCall) -> str:
    """The PCI devices a backend offers: the host's for dom0, none for a VM."""
    devices = host_pci_devices() if call.dest.qid == 0 else []
    return "".join(f"{ident} {description}\n" for ident, description in devices
                   if not call.arg or call.arg == ident)


@method("admin.vm.device.pci.Assigned", scope="local", read=True, argument=True,
        argument_optional=True)
async def pci_assigned(call: ApiCall) -> str:
    """The PCI devices assigned to the VM, with their options, as kept in qubes.xml."""
    lines = []
    for assignment in call.dest.devices["pci"]:
        name = f"{assignment.backend_domain}+{assignment.ident}"
        if call.arg and call.arg != name:
            continue
        options = "".join(f" {k}={v}" for k, v in sorted(assignment.options.items()))
        lines.append(f"{name}{options}\n")
    return "".join(lines)


@method("admin.vm.device.pci.Assign", scope="local", write=True, argument=True,
        payload=True, max_payload=4096)
async def pci_assign(call: ApiCall) -> None:
    """Assign a backend's PCI device to the VM from its next start; only persistent
    assignments exist, and dom0 takes none.
    """
    call.require_not_dom0()
    backend, ident = _split_device(call)
    text = call.payload_text("device options", ascii_only=True)
    options = parse_key_values(text, "device options")
    for key in PERSISTENT_KEYS:
        value = options.pop(key, "True")
        if value.lower() not in ("true", "yes", "1"):
            raise exc.QubesValueError(
                "only persistent assignments exist: a PCI device cannot be attached to a "
                f"running VM alone ({key}={value!r})")
    call.dest.devices["pci"].assign(DeviceAssignment(backend.name, ident, options, "pci"))


@method("admin.vm.device.pci.Unassign", scope="local", write=True, argument=True)
async def pci_unassign(call: ApiCall) -> None:
    """Drop a PCI assignment; the VM goes without the device from its next start."""
    backend, ident = _split_device(call)
    call.dest.devices["pci"].unassign(backend.name, ident)
