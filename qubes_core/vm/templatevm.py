"""TemplateVM: provides the root filesystem that AppVMs snapshot at start."""

from __future__ import annotations

from qubes_core.vm.qubesvm import QubesVM


class TemplateVM(QubesVM):
    @property
    def appvms(self) -> list[QubesVM]:
        """VMs based on this template (set or by default)."""
        return [vm for vm in self.app.domains if getattr(vm, "template", None) is self]
