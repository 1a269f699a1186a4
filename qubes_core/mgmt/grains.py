"""dom0 grains: the host's PCI network and USB controllers, for the sys-net and
sys-usb formulas to assign.

Read from sysfs (``/sys/bus/pci/devices``) the way qubesd lists dom0's PCI
devices; a network controller is PCI class 0x02, a USB controller 0x0c03. On a
machine without them (or without sysfs) the lists are empty.
"""

from __future__ import annotations

from pathlib import Path

from qubes_core.api.devices import host_pci_devices

NET_CLASS = "0x02"
USB_CLASS = "0x0c03"


def pci_devices_of_class(prefix: str, root: Path | None = None) -> list[str]:
    """``BB:DD.F`` of each host PCI device whose class starts with ``prefix``."""
    found = []
    for device in host_pci_devices(root):
        # the interface code is "p" and the six hex digits of the class
        if ("0x" + device["interfaces"][1:]).lower().startswith(prefix):
            found.append(device["port"].replace("_", ":"))
    return found


def pci_grains(root: Path | None = None) -> dict[str, list[str]]:
    """``{"pci_net_devs": [...], "pci_usb_devs": [...]}``."""
    return {"pci_net_devs": pci_devices_of_class(NET_CLASS, root),
            "pci_usb_devs": pci_devices_of_class(USB_CLASS, root)}
