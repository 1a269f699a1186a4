"""Grains of a Qubes dom0: ``pci_net_devs`` and ``pci_usb_devs`` (``BB:DD.F`` each).

The sys-net formula assigns the network controllers to sys-net from
``pci_net_devs``; the lists come from the host's sysfs and are empty on a
machine without such devices.
"""

from __future__ import annotations

from qubes_core.mgmt.grains import pci_grains


def pci_devices():
    """``pci_net_devs`` and ``pci_usb_devs`` from sysfs."""
    return pci_grains()
