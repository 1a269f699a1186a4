"""AppVM: runs on a snapshot of its template's root; keeps its own private volume."""

from __future__ import annotations

from typing import Any

from qubes_core import exc
from qubes_core.events import handler
from qubes_core.properties import Property, VMProperty
from qubes_core.vm import volumes
from qubes_core.vm.qubesvm import QubesVM
from qubes_core.vm.templatevm import TemplateVM


class AppVM(QubesVM):
    """A VM running on a snapshot of its template's root, with its own private volume.

    With ``template_for_dispvms`` it is the base DispVMs are made from.
    """

    volume_layout = volumes.TEMPLATE_BASED

    template = VMProperty(
        "template", vmclass=TemplateVM, load_stage=4,
        default=lambda vm: vm.app.default_template,
        doc="Template whose root volume this VM runs on; changed only while the VM (and "
            "its DispVMs) are halted, and its root then snapshots the new template's "
            "(qubes_core.ext.templates).",
    )
    template_for_dispvms = Property(
        "template_for_dispvms", type=bool, default=False,
        doc="Whether DispVMs may be created from this VM.",
    )

    def persistence(self) -> str:
        return "rw-only" if self.template is not None else "full"

    def icon_name(self) -> str:
        if self.template_for_dispvms:
            return "templatevm-" + self.label.name
        return super().icon_name()

    @property
    def dispvms(self) -> list[Any]:
        from qubes_core.vm.dispvm import DispVM  # it is built on this class

        return [vm for vm in self.app.domains if isinstance(vm, DispVM) and vm.template is self]

    @handler("property-pre-reset:template_for_dispvms")
    def _on_pre_reset_dispvm_template(self, event: str, name: str,
                                      oldvalue: Any = None) -> None:
        self._on_pre_clear_dispvm_template(
            event, name, self.property_get_default("template_for_dispvms"), oldvalue)

    @handler("property-pre-set:template_for_dispvms")
    def _on_pre_clear_dispvm_template(self, event: str, name: str, newvalue: bool,
                                      oldvalue: Any = None) -> None:
        if not newvalue and self.dispvms:
            names = ", ".join(sorted(vm.name for vm in self.dispvms))
            raise exc.QubesValueError(
                f"cannot clear template_for_dispvms of {self}: DispVMs use it: {names}"
            )
