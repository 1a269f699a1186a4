"""Device methods of every class, in Qubes R4.4's wire format, and the denied list.

``admin.vm.device.CLASS.{Available, Assigned, Attached, Assign, Unassign, Attach,
Detach, Set.assignment}`` exist for ``block``, ``mic``, ``pci`` and ``usb``, whether
or not a backend exposes devices of the class here (the client lists every
class). Lines and payloads are as Qubes' ``device_protocol`` writes them:

- a device: ``PORT:DEVICE_ID device_id='..' port_id='..' devclass='..'
  backend_domain='..' [vendor='..' product='..'] interfaces='..'`` (Available);
- an assignment: ``BACKEND+PORT:DEVICE_ID`` then the device's four keys,
  ``mode='required'`` and ``_OPTION='VALUE'`` for each option (Assigned, Attached,
  and the payload of Assign and Attach);
- values are single-quoted with ``\\'`` for a quote; the argument is
  ``BACKEND+PORT[+DEVICE_ID]`` with ``:`` written ``+`` and ``*`` written ``_``.

dom0's PCI devices are read from ``/sys/bus/pci/devices`` of the machine qubesd
runs on. No backend here exposes block, USB or microphone devices, so those lists
are empty and Attach of such a device is refused as unknown; assignments of every
class are kept and listed all the same. A PCI device is attached when its VM
starts (Attached lists them while the VM runs); attaching one to a running VM is
refused.

``admin.vm.device.denied.{List, Add, Remove}`` edit ``devices_denied``: 7-character
interface codes (``p0e****``), listed one per line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.devices import (
    ASSIGNMENT_MODES,
    DEVICE_CLASSES,
    DeviceAssignment,
    pack,
    parse_denied_list,
    unpack,
    validate_denied_list,
)
from qubes_core.vm.base import BaseVM

SYSFS_PCI = Path("/sys/bus/pci/devices")
SYSFS_NAME_RE = re.compile(r"^0000:([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
def _device_keys(devclass: str, backend: str, port: str, identity: str) -> list[str]:
    return [pack("device_id", identity), pack("port_id", port), pack("devclass", devclass),
            pack("backend_domain", backend)]


def assignment_line(assignment: DeviceAssignment, frontend: Any = None) -> str:
    """One line of Assigned / Attached."""
    fields = _device_keys(assignment.devclass, assignment.backend_domain, assignment.ident,
                          assignment.identity)
    fields.append(pack("mode", assignment.mode))
    if frontend is not None:
        fields.append(pack("frontend_domain", frontend.name))
    fields.extend(pack("_" + key, value) for key, value in sorted(assignment.options.items()))
    head = f"{assignment.backend_domain}+{assignment.ident}:{assignment.identity}"
    return f"{head} {' '.join(fields)}\n"


# --- dom0's PCI devices --------------------------------------------------------

def _read_attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def host_pci_devices(root: Path | None = None) -> list[dict[str, str]]:
    """The PCI devices of this machine (domain 0000): port, identity, vendor, product and
    interface code of each, as Qubes describes them."""
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
        vendor = _read_attr(root / name / "vendor").removeprefix("0x")
        product = _read_attr(root / name / "device").removeprefix("0x")
        klass = _read_attr(root / name / "class").removeprefix("0x")[:6].ljust(6, "0")
        interface = "p" + klass
        found.append({
            "port": f"{match.group(1)}_{match.group(2)}.{match.group(3)}",
            "identity": f"0x{vendor}:0x{product}::{interface}",
            "vendor": f"0x{vendor}", "product": f"0x{product}", "interfaces": interface,
        })
    return found


def exposed_devices(backend: Any, devclass: str) -> list[dict[str, str]]:
    """The devices of ``devclass`` that ``backend`` offers here."""
    if devclass == "pci" and backend.qid == 0:
        return host_pci_devices()
    return []


# --- the request's argument -----------------------------------------------------

def parse_device_arg(call: ApiCall) -> tuple[Any, str, str]:
    """``(backend VM, port, identity)`` from ``BACKEND+PORT[+DEVICE_ID]``."""
    backend_name, sep, rest = call.require_arg("BACKEND+PORT").partition("+")
    if not sep or not rest:
        raise exc.QubesValueError(
            f"{call.method}: the argument is BACKEND+PORT[+DEVICE_ID], like dom0+00_1f.2")
    port, _, identity = rest.replace("+", ":").partition(":")
    port = "*" if port == "_" else port
    identity = "*" if identity in ("", "_") else identity.replace("_______", "?******")
    return call.app.domains[backend_name], port, identity


def _devclass(call: ApiCall) -> str:
    return call.method.split(".")[3]


def _parse_assignment(call: ApiCall, devclass: str, backend: Any, port: str,
                      identity: str) -> DeviceAssignment:
    """The payload of Assign / Attach: it must name the argument's device."""
    text = call.payload_text("device assignment", ascii_only=True)
    properties, options = unpack(text)
    expected = {"backend_domain": backend.name, "port_id": port, "devclass": devclass}
    for key, value in expected.items():
        if properties.pop(key, value) != value:
            raise exc.UnexpectedDeviceProperty(
                f"the payload names {key}={properties.get(key, '?')!r}, the argument "
                f"{value!r}")
    given = properties.pop("device_id", identity)
    if identity != "*" and given != identity:
        raise exc.UnexpectedDeviceProperty(
            f"the payload names device {given!r}, the argument {identity!r}")
    mode = properties.pop("mode", "manual")
    frontend = properties.pop("frontend_domain", call.dest.name)
    if frontend != call.dest.name:
        raise exc.UnexpectedDeviceProperty(
            f"the payload is for {frontend!r}, the request for {call.dest.name!r}")
    if properties:
        raise exc.UnexpectedDeviceProperty(
            f"unknown device properties: {', '.join(sorted(properties))}")
    if mode not in ASSIGNMENT_MODES:
        raise exc.QubesUnrecognizedDeviceAssignmentMode(f"invalid assignment mode {mode!r}")
    if mode == "manual" and call.method.endswith(".Assign"):
        raise exc.QubesValueError(
            "only devices attached automatically can be assigned (mode required, "
            "auto-attach or ask-to-attach); use Attach for a one-time attachment")
    return DeviceAssignment(backend.name, port, options, devclass,
                            "required" if mode == "manual" else mode, given)


# --- methods --------------------------------------------------------------------

async def device_available(call: ApiCall) -> str:
    """The devices of this class the destination (as backend) exposes."""
    devclass = _devclass(call)
    lines = {}
    for device in exposed_devices(call.dest, devclass):
        if call.arg and call.arg != device["port"]:
            continue
        fields = _device_keys(devclass, call.dest.name, device["port"], device["identity"])
        fields += [pack(key, device[key]) for key in ("vendor", "product") if key in device]
        fields.append(pack("interfaces", device["interfaces"]))
        lines[f"{device['port']}:{device['identity']}"] = " ".join(fields)
    return "".join(f"{head} {lines[head]}\n" for head in sorted(lines))


def _select(call: ApiCall, assignments: list[DeviceAssignment]) -> list[DeviceAssignment]:
    if not call.arg:
        return assignments
    backend, _, port = call.arg.partition("+")
    return [a for a in assignments if (a.backend_domain, a.ident) == (backend, port)]


async def device_assigned(call: ApiCall) -> str:
    """The assignments of this class kept in qubes.xml for the VM."""
    collection = call.dest.devices.get(_devclass(call))
    assignments = collection.assignments() if collection is not None else []
    return "".join(assignment_line(a, call.dest) for a in _select(call, assignments))


def attached(vm: BaseVM, devclass: str) -> list[DeviceAssignment]:
    """What is attached to the running ``vm``: the PCI devices it started with."""
    if devclass != "pci" or vm.qid == 0 or not vm.is_running():
        return []
    return vm.devices["pci"].assignments()


async def device_attached(call: ApiCall) -> str:
    """The devices of this class attached to the running VM now."""
    assignments = attached(call.dest, _devclass(call))
    return "".join(assignment_line(a, call.dest) for a in _select(call, assignments))


async def device_assign(call: ApiCall) -> None:
    """Assign a device from the VM's next start (or, auto-attach, whenever it appears)."""
    call.require_not_dom0()
    devclass = _devclass(call)
    backend, port, identity = parse_device_arg(call)
    assignment = _parse_assignment(call, devclass, backend, port, identity)
    call.dest.devices.collection(devclass).assign(assignment)


async def device_unassign(call: ApiCall) -> None:
    """Drop an assignment; the VM goes without the device from its next start."""
    backend, port, _identity = parse_device_arg(call)
    collection = call.dest.devices.get(_devclass(call))
    if collection is None:
        raise exc.DeviceNotAssigned(f"device {backend}:{port} is not assigned to {call.dest}")
    collection.unassign(backend.name, port)


async def device_attach(call: ApiCall) -> None:
    """Attach a device to the running VM now, for as long as it runs."""
    call.require_not_dom0()
    devclass = _devclass(call)
    backend, port, identity = parse_device_arg(call)
    _parse_assignment(call, devclass, backend, port, identity)
    if not call.dest.is_running():
        raise exc.QubesVMNotRunningError(
            call.dest, f"{call.dest} is not running: cannot attach a device (assign it "
                       "instead)")
    if not any(d["port"] == port for d in exposed_devices(backend, devclass)):
        raise exc.DeviceNotFound(f"{backend} exposes no {devclass} device at port {port!r}")
    raise exc.QubesException(
        f"{devclass} devices are attached when the VM starts: assign {backend}:{port} and "
        f"restart {call.dest}")


async def device_detach(call: ApiCall) -> None:
    """Detach a device from the running VM."""
    devclass = _devclass(call)
    backend, port, _identity = parse_device_arg(call)
    if not any((a.backend_domain, a.ident) == (backend.name, port)
               for a in attached(call.dest, devclass)):
        raise exc.DeviceNotAssigned(
            f"{devclass} device {backend}:{port} is not attached to {call.dest}")
    raise exc.QubesVMNotHaltedError(
        call.dest, "a required device cannot be detached from a running VM: unassign it "
                   "and restart the VM")


async def device_set_assignment(call: ApiCall) -> None:
    """Change the mode of an assignment: required, auto-attach or ask-to-attach."""
    devclass = _devclass(call)
    backend, port, _identity = parse_device_arg(call)
    mode = call.payload_text("assignment mode", ascii_only=True)
    if mode not in ASSIGNMENT_MODES[:3]:
        raise exc.QubesUnrecognizedDeviceAssignmentMode(f"invalid assignment mode {mode!r}")
    collection = call.dest.devices.get(devclass)
    if collection is None:
        raise exc.QubesValueError(f"device {backend}:{port} is not assigned to {call.dest}")
    collection.update_mode(backend.name, port, mode)


@method("admin.deviceclass.List", scope="global", read=True, dest="adminvm")
async def deviceclass_list(call: ApiCall) -> str:
    """The device classes, one per line."""
    return "".join(f"{devclass}\n" for devclass in DEVICE_CLASSES)


for _class in DEVICE_CLASSES:
    _prefix = f"admin.vm.device.{_class}."
    method(_prefix + "Available", scope="local", read=True, argument=True,
           argument_optional=True)(device_available)
    method(_prefix + "Assigned", scope="local", read=True, argument=True,
           argument_optional=True)(device_assigned)
    method(_prefix + "Attached", scope="local", read=True, argument=True,
           argument_optional=True)(device_attached)
    method(_prefix + "Assign", scope="local", write=True, argument=True, payload=True,
           max_payload=4096)(device_assign)
    method(_prefix + "Unassign", scope="local", write=True, argument=True)(device_unassign)
    method(_prefix + "Attach", scope="local", execute=True, argument=True, payload=True,
           max_payload=4096)(device_attach)
    method(_prefix + "Detach", scope="local", execute=True, argument=True)(device_detach)
    method(_prefix + "Set.assignment", scope="local", write=True, argument=True,
           payload=True, max_payload=64)(device_set_assignment)


# --- the denied list ------------------------------------------------------------

def _payload_codes(call: ApiCall) -> list[str]:
    text = call.payload_text("device interfaces", ascii_only=True)
    try:
        codes = parse_denied_list(text)
    except exc.QubesValueError as err:
        raise exc.ProtocolError(str(err)) from None
    if len(set(codes)) != len(codes):
        raise exc.ProtocolError("the same device interface is given twice")
    return codes


@method("admin.vm.device.denied.List", scope="local", read=True)
async def denied_list(call: ApiCall) -> str:
    """The interface codes never attached to the VM, one per line."""
    return "\n".join(parse_denied_list(call.dest.devices_denied))


@method("admin.vm.device.denied.Add", scope="local", write=True, payload=True,
        max_payload=7 * 1024)
async def denied_add(call: ApiCall) -> None:
    """Add interface codes (concatenated, no separator) to the VM's denied list."""
    codes = _payload_codes(call)
    new = validate_denied_list(call.dest.devices_denied + "".join(codes))
    if new != call.dest.devices_denied:
        call.dest.devices_denied = new


@method("admin.vm.device.denied.Remove", scope="local", write=True, payload=True,
        max_payload=7 * 1024)
async def denied_remove(call: ApiCall) -> None:
    """Remove interface codes (or ``all``) from the VM's denied list."""
    current = parse_denied_list(call.dest.devices_denied)
    drop = set(current) if call.payload == b"all" else set(_payload_codes(call))
    new = "".join(code for code in current if code not in drop)
    if new != call.dest.devices_denied:
        call.dest.devices_denied = new
