"""TemplateVM: provides the root filesystem that AppVMs snapshot at start."""

from __future__ import annotations

from qubes_core.properties import VMProperty
from qubes_core.vm.qubesvm import QubesVM, validate_netvm


class TemplateVM(QubesVM):
    """A VM whose root volume AppVMs run on; it keeps root and private, and has no netvm
    unless one is set.
    """

    netvm = VMProperty(
        "netvm", allow_none=True, default=None, setter=validate_netvm,
        doc="Templates have no network by default: they update through a proxy.",
    )

    @property
    def appvms(self) -> list[QubesVM]:
        """VMs based on this template (set or by default)."""
        return [vm for vm in self.app.domains if getattr(vm, "template", None) is self]
