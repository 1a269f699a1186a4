"""Device assignments (PCI for now): which host device a VM gets at start."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qubes_core import exc

PCI_IDENT_RE = re.compile(r"^[0-9a-f]{2}_[0-9a-f]{2}\.[0-7]$")
OPTION_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPTION_VALUE_RE = re.compile(r"^[a-zA-Z0-9_.:,-]{0,128}$")


@dataclass
class DeviceAssignment:
    """One device of a backend domain, given to a VM with options."""

    backend_domain: str
    ident: str
    options: dict[str, str] = field(default_factory=dict)
    devclass: str = "pci"

    def __post_init__(self) -> None:
        if self.devclass == "pci" and not PCI_IDENT_RE.match(self.ident or ""):
            raise exc.QubesValueError(
                f"invalid PCI device id {self.ident!r}: expected BB_DD.F like 00_1f.2"
            )
        if self.devclass == "pci" and self.backend_domain != "dom0":
            raise exc.QubesValueError(
                f"PCI device {self.ident} must come from dom0, not {self.backend_domain!r}"
            )
        for key, value in self.options.items():
            if not OPTION_NAME_RE.match(key) or not OPTION_VALUE_RE.match(str(value)):
                raise exc.QubesValueError(f"invalid device option {key!r}={value!r}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend_domain, self.ident)


class DeviceCollection:
    """The assignments of one device class to one VM; changes fire events on the VM."""

    def __init__(self, vm: Any, devclass: str):
        self.vm = vm
        self.devclass = devclass
        self._assigned: dict[tuple[str, str], DeviceAssignment] = {}

    def assign(self, assignment: DeviceAssignment) -> None:
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


class DeviceManager(dict):
    """``vm.devices['pci']``: one collection per device class."""

    def __init__(self, vm: Any, classes: tuple[str, ...] = ("pci",)):
        super().__init__({devclass: DeviceCollection(vm, devclass) for devclass in classes})
