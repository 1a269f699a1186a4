"""DispVM: a disposable VM, created from an AppVM marked ``template_for_dispvms``.

At creation it takes its AppVM's properties, features and tags (not device
assignments: a device can belong to one running VM only). With ``auto_cleanup``
it is removed from disk and from qubes.xml when it stops.
"""

from __future__ import annotations

from typing import Any

from qubes_core import exc
from qubes_core.properties import Property, StatelessProperty, VMProperty
from qubes_core.vm.appvm import AppVM
from qubes_core.vm.qubesvm import QubesVM, validate_disposable_template

MAX_DISPID = 9999


def _validate_dispvm_template(vm: Any, prop: Any, value: Any) -> Any:
    if not getattr(value, "template_for_dispvms", False):
        raise exc.QubesPropertyValueError(
            vm, prop, value,
            f"cannot create a DispVM from {value}: its template_for_dispvms is False",
        )
    return value


def _validate_dispid(vm: Any, prop: Any, value: int) -> int:
    if not 1 <= value <= MAX_DISPID:
        raise ValueError(f"dispid must be between 1 and {MAX_DISPID}")
    return value


class DispVM(QubesVM):
    """A disposable VM: root and private are snapshots of its AppVM's; named ``disp<dispid>``."""

    template = VMProperty(
        "template", vmclass=AppVM, load_stage=4, write_once=True,
        setter=_validate_dispvm_template,
        doc="AppVM this DispVM is based on (its root and private are snapshots of it).",
    )
    dispid = Property("dispid", type=int, write_once=True, clone=False, load_stage=1,
                      setter=_validate_dispid,
                      doc="Number of this DispVM; its default name is disp<dispid>.")
    auto_cleanup = Property(
        "auto_cleanup", type=bool, default=False, clone=False,
        doc="Remove the DispVM (disk and qubes.xml) when it stops.",
    )
    include_in_backups = Property(
        "include_in_backups", type=bool, default=lambda vm: not vm.auto_cleanup,
        doc="Include the DispVM in backups by default (not if it is removed at stop).")
    default_dispvm = VMProperty(
        "default_dispvm", allow_none=True, load_stage=4, setter=validate_disposable_template,
        default=lambda vm: vm.template,
        doc="AppVM whose DispVMs this DispVM starts by default: its own.")
    is_preload = StatelessProperty(
        "is_preload", lambda vm: False, type=bool,
        doc="Whether this DispVM was started ahead of use (never here: no preloading).")

    def __init__(self, app: Any, **kwargs: Any) -> None:
        creating = "template" in kwargs
        if creating and "dispid" not in kwargs:
            kwargs["dispid"] = app.domains.get_new_unused_dispid()
        if creating:
            kwargs.setdefault("name", f"disp{kwargs['dispid']}")
        super().__init__(app, **kwargs)
        if creating:
            self._inherit_from(self.template, set(kwargs))

    def _inherit_from(self, appvm: AppVM, explicit: set[str]) -> None:
        """Take the AppVM's settings; what the caller passed explicitly wins."""
        own = {p.__name__ for p in self.property_list()}
        names = [p.__name__ for p in appvm.property_list()
                 if p.clone and p.__name__ in own and p.__name__ not in explicit
                 and p.__name__ != "template"]
        self.clone_properties(appvm, names)
        for key, value in appvm.features.items():
            self.features[key] = value
        self.tags.update(appvm.tags)

    @classmethod
    def from_appvm(cls, appvm: AppVM, **kwargs: Any) -> DispVM:
        """Create (in the model) a new DispVM of ``appvm``."""
        return appvm.app.add_new_vm(cls, template=appvm, **kwargs)
