"""TemplateVM: provides the root filesystem that AppVMs snapshot at start."""

from __future__ import annotations

from qubes_core.properties import Property, VMProperty
from qubes_core.vm import volumes
from qubes_core.vm.qubesvm import QubesVM, validate_bootmode, validate_netvm


def _default_appvm_bootmode(vm: QubesVM) -> str:
    return vm.features.get("boot-mode.appvm-default", "default")


class TemplateVM(QubesVM):
    """A VM whose root volume AppVMs run on; it keeps root and private, and has no netvm
    unless one is set.
    """

    volume_layout = volumes.SELF_CONTAINED
    vid_dir = "vm-templates"

    appvm_default_bootmode = Property(
        "appvm_default_bootmode", type=str, load_stage=4, setter=validate_bootmode,
        default=_default_appvm_bootmode,
        doc="Boot mode of the AppVMs based on this template that do not choose one.")
    netvm = VMProperty(
        "netvm", allow_none=True, default=None, setter=validate_netvm,
        load_stage=4,
        doc="Templates have no network by default: they update through a proxy.",
    )

    def icon_name(self) -> str:
        return "templatevm-" + self.label.name

    @property
    def appvms(self) -> list[QubesVM]:
        """VMs based on this template (set or by default)."""
        return [vm for vm in self.app.domains if isinstance(vm, QubesVM) and vm.template is self]
