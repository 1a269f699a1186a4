"""Device assignments: which backend's device a VM gets, of every device class.

An assignment names a backend domain, a port (``ident``: where the device is
plugged, e.g. PCI ``00_1f.2`` or block ``loop7``), an ``identity`` that the device
at that port must have (``*``: any), a ``mode`` (``required``: the VM does not
start without it; ``auto-attach``, ``ask-to-attach``) and options. Each VM has a
collection for every class, ``pci``, ``block``, ``usb`` and ``mic`` at least, and
for any other class its qubes.xml names, so that no assignment a user made is
lost by a load and a save. Every field is validated when the assignment is made,
whether from the API or from qubes.xml, so that what is kept can always be
written back and sent on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qubes_core import exc

if TYPE_CHECKING:
    from qubes_core.vm.base import BaseVM

# A PCI port is a path of bridges: [SSSS_]BB_DD.F[-BB_DD.F...] (``00_1c.0-00_00.0``).
PCI_IDENT_RE = re.compile(
    r"^(?:[0-9a-f]{4}_)?[0-9a-f]{2}_[0-9a-f]{2}\.[0-7](?:-[0-9a-f]{2}_[0-9a-f]{2}\.[0-7])*$")
PORT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
IDENTITY_RE = re.compile(r"^(\*|[A-Za-z0-9_.:*?+,()-]{1,256})$")
DEVCLASS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
OPTION_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPTION_VALUE_RE = re.compile(r"^[a-zA-Z0-9_.:,/-]{0,128}$")

DEVICE_CLASSES = ("block", "mic", "pci", "usb")
ASSIGNMENT_MODES = ("required", "auto-attach", "ask-to-attach", "manual")


def validate_devclass(devclass: str) -> str:
    """A device class name as qubes.xml and method names carry it."""
    if not isinstance(devclass, str) or not DEVCLASS_RE.match(devclass):
        raise exc.QubesValueError(f"invalid device class {devclass!r}")
    return devclass


@dataclass
class DeviceAssignment:
    """One device of a backend domain, given to a VM with options."""

    backend_domain: str
    ident: str
    options: dict[str, str] = field(default_factory=dict)
    devclass: str = "pci"
    mode: str = "required"
    identity: str = "*"

    def __post_init__(self) -> None:
        validate_devclass(self.devclass)
        if self.devclass == "pci":
            if not PCI_IDENT_RE.match(self.ident or ""):
                raise exc.QubesValueError(
                    f"invalid PCI device id {self.ident!r}: expected BB_DD.F like 00_1f.2")
            if self.backend_domain != "dom0":
                raise exc.QubesValueError(
                    f"PCI device {self.ident} must come from dom0, not {self.backend_domain!r}")
        elif not PORT_RE.match(self.ident or ""):
            raise exc.QubesValueError(
                f"invalid {self.devclass} device id {self.ident!r}: letters, digits, "
                "'_', '.', ':' and '-', at most 64")
        if not isinstance(self.backend_domain, str) or not PORT_RE.match(self.backend_domain):
            raise exc.QubesValueError(f"invalid backend domain {self.backend_domain!r}")
        if self.mode not in ASSIGNMENT_MODES[:3]:
            raise exc.QubesValueError(
                f"invalid assignment mode {self.mode!r}: one of required, auto-attach, "
                "ask-to-attach")
        if not isinstance(self.identity, str) or not IDENTITY_RE.match(self.identity):
            raise exc.QubesValueError(f"invalid device identity {self.identity!r}")
        for key, value in self.options.items():
            if (not isinstance(value, str) or not OPTION_NAME_RE.match(key)
                    or not OPTION_VALUE_RE.match(value)):
                raise exc.QubesValueError(f"invalid device option {key!r}={value!r}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend_domain, self.ident)

    @property
    def required(self) -> bool:
        return self.mode == "required"


class DeviceCollection:
    """The assignments of one device class to one VM; changes fire events on the VM."""

    def __init__(self, vm: BaseVM, devclass: str):
        self.vm = vm
        self.devclass = devclass
        self._assigned: dict[tuple[str, str], DeviceAssignment] = {}

    def assign(self, assignment: DeviceAssignment) -> None:
        if assignment.devclass != self.devclass:
            raise exc.QubesValueError(
                f"a {assignment.devclass} device cannot be assigned as {self.devclass}")
        if assignment.key in self._assigned:
            raise exc.DeviceAlreadyAssigned(
                f"device {assignment.backend_domain}:{assignment.ident} already assigned to "
                f"{self.vm.name}"
            )
        self.vm.fire_event("device-pre-assign:" + self.devclass, pre_event=True,
                           device=assignment)
        self._assigned[assignment.key] = assignment
        self.vm.fire_event("device-assign:" + self.devclass, device=assignment)

    def unassign(self, backend_domain: str, ident: str) -> DeviceAssignment:
        key = (backend_domain, ident)
        if key not in self._assigned:
            raise exc.DeviceNotAssigned(
                f"device {backend_domain}:{ident} is not assigned to {self.vm.name}"
            )
        assignment = self._assigned[key]
        self.vm.fire_event("device-pre-unassign:" + self.devclass, pre_event=True,
                           device=assignment)
        del self._assigned[key]
        self.vm.fire_event("device-unassign:" + self.devclass, device=assignment)
        return assignment

    def update_mode(self, backend_domain: str, ident: str, mode: str) -> None:
        """Change how an assigned device is attached (``required``, ``auto-attach``, ...)."""
        key = (backend_domain, ident)
        if key not in self._assigned:
            raise exc.QubesValueError(
                f"device {backend_domain}:{ident} is not assigned to {self.vm.name}")
        old = self._assigned[key]
        new = DeviceAssignment(old.backend_domain, old.ident, dict(old.options),
                               old.devclass, mode, old.identity)
        if new.mode == old.mode:
            return
        self.vm.fire_event("device-pre-assign:" + self.devclass, pre_event=True, device=new)
        self._assigned[key] = new
        self.vm.fire_event("device-assignment-changed:" + self.devclass, device=new)

    def load(self, assignment: DeviceAssignment) -> None:
        self._assigned[assignment.key] = assignment

    def assignments(self) -> list[DeviceAssignment]:
        return [self._assigned[k] for k in sorted(self._assigned)]

    def __iter__(self) -> Iterator[DeviceAssignment]:
        return iter(self.assignments())

    def __len__(self) -> int:
        return len(self._assigned)

    def __bool__(self) -> bool:
        return bool(self._assigned)


class DeviceManager(dict[str, "DeviceCollection"]):
    """``vm.devices['pci']``: one collection per device class."""

    def __init__(self, vm: BaseVM, classes: tuple[str, ...] = DEVICE_CLASSES):
        super().__init__({devclass: DeviceCollection(vm, devclass) for devclass in classes})
        self.vm = vm

    def collection(self, devclass: str) -> DeviceCollection:
        """The collection of ``devclass``, made if qubes.xml names a class not known here."""
        if devclass not in self:
            self[validate_devclass(devclass)] = DeviceCollection(self.vm, devclass)
        return self[devclass]


# A denied list is a run of 7-character interface codes: the class (b, u, m, p, or
# * for any) then six hex digits or * (PCI class/subclass/interface, USB the same).
DENIED_ITEM_RE = re.compile(r"[bump*][0-9a-f*]{6}")


def parse_denied_list(text: str) -> list[str]:
    """The interface codes of a denied list, in order; refuses anything malformed."""
    if not isinstance(text, str) or len(text) % 7 or len(text) > 7 * 1024:
        raise exc.QubesValueError(
            f"invalid device interface list {text!r}: a run of 7-character codes like "
            "p0e****, at most 1024 of them")
    items = [text[i:i + 7] for i in range(0, len(text), 7)]
    for item in items:
        if not DENIED_ITEM_RE.fullmatch(item):
            raise exc.QubesValueError(
                f"invalid device interface {item!r}: a class letter (b, u, m, p or *) then "
                "six hex digits or '*'")
    return items


def validate_denied_list(text: str) -> str:
    """The canonical form of a denied list: each code once, sorted (as Qubes keeps it)."""
    if not text:
        return ""
    return "".join(sorted(set(parse_denied_list(text))))


# --- the serialized form of the Admin API (Qubes' device_protocol) ---------------

# Characters of keys and values on the wire, as the reference's serializer allows.
KEY_CHARS = re.compile(r"^[A-Za-z0-9!#$%&()*+,\-./:;<>?@\[\\\]^_{|}~]+$")
VALUE_CHARS = re.compile(r"^[ -~]*$")


def pack(key: str, value: str) -> str:
    """``key='value'``, with a quote in the value written ``\\'``."""
    if not KEY_CHARS.match(key) or not VALUE_CHARS.match(value):
        raise exc.QubesValueError(f"device property {key!r} cannot be sent: {value!r}")
    return f"{key}='" + value.replace("'", "\\'") + "'"


def unpack(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Properties and ``_``-prefixed options of a serialized device or assignment."""
    properties: dict[str, str] = {}
    options: dict[str, str] = {}
    rest = text.strip()
    while rest:
        key, sep, rest = rest.partition("='")
        key = key.strip()
        if not sep or not KEY_CHARS.match(key):
            raise exc.ProtocolError(f"malformed device property near {key[:40]!r}")
        value, index = [], 0
        while True:
            end = rest.find("'", index)
            if end < 0:
                raise exc.ProtocolError(f"unterminated value of device property {key!r}")
            if end > 0 and rest[end - 1] == "\\":
                value.append(rest[index:end - 1] + "'")
                index = end + 1
                continue
            value.append(rest[index:end])
            rest = rest[end + 1:]
            break
        text_value = "".join(value)
        if not VALUE_CHARS.match(text_value):
            raise exc.ProtocolError(f"invalid characters in device property {key!r}")
        target = options if key.startswith("_") else properties
        name = key[1:] if key.startswith("_") else key
        if name in target:
            raise exc.ProtocolError(f"device property {key!r} given twice")
        target[name] = text_value
        if rest and not rest.startswith(" "):
            raise exc.ProtocolError("device properties must be separated by spaces")
        rest = rest.lstrip(" ")
    return properties, options
