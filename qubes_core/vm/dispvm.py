"""DispVM: a disposable VM, created from an AppVM marked ``template_for_dispvms``.

Everything that makes a VM disposable is here, so that a subclass (a plugin's
VM class) behaves the same: its name ``disp<dispid>``, its addresses, its
volumes (snapshots of its AppVM's, nothing kept), that nothing persists, and its
clean-up. At creation it takes its AppVM's properties, features and tags (not
device assignments: a device can belong to one running VM only). With
``auto_cleanup`` it is removed from disk and from qubes.xml when a run ends
(it stopped, or its start failed), and a qubesd starting removes those an
unclean stop left behind.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.properties import Property, StatelessProperty, VMProperty
from qubes_core.vm import volumes
from qubes_core.vm.appvm import AppVM
from qubes_core.vm.lifecycle import save_app
from qubes_core.vm.qubesvm import QubesVM, validate_disposable_template

if TYPE_CHECKING:
    from qubes_core.app import Qubes

log = logging.getLogger("qubes.vm")

MAX_DISPID = 9999


def _validate_dispvm_template(vm: DispVM, prop: Any, value: Any) -> Any:
    if not value.template_for_dispvms:
        raise exc.QubesPropertyValueError(
            vm, prop, value,
            f"cannot create a DispVM from {value}: its template_for_dispvms is False",
        )
    return value


def _validate_dispid(vm: DispVM, prop: Any, value: int) -> int:
    if not 1 <= value <= MAX_DISPID:
        raise ValueError(f"dispid must be between 1 and {MAX_DISPID}")
    return value


class DispVM(QubesVM):
    """A disposable VM: root and private are snapshots of its AppVM's; named ``disp<dispid>``."""

    volume_layout = volumes.DISPOSABLE
    icon_kind = "dispvm"
    disposable = True

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

    def __init__(self, app: Qubes, **kwargs: Any) -> None:
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
        vm = appvm.app.add_new_vm(cls, template=appvm, **kwargs)
        assert isinstance(vm, cls)
        return vm

    def persistence(self) -> str:
        return "none"

    def address_number(self) -> tuple[str, str, int]:
        """DispVMs have their own ranges (10.138.x.y, ``::a8a:N``), numbered by dispid."""
        dispid = self.property_own_value("dispid")
        return super().address_number() if dispid is None else ("10.138", "a8a", dispid)

    async def after_run(self) -> None:
        """With ``auto_cleanup``: out of the model, its files removed, qubes.xml saved."""
        if self.auto_cleanup:
            await self._remove_disposable()

    async def _remove_disposable(self) -> None:
        """Remove the VM: its entry, its volumes; save qubes.xml.

        The caller holds the startup lock or handles the VM's stop (its volumes are
        in use): :meth:`remove` is refused meanwhile.
        """
        app = self.app
        if app.domains.get(self.qid) is not self:
            return
        try:
            del app.domains[self]
        except exc.QubesException as error:
            log.error("cannot remove disposable %s: %s (it stays, with its files)", self, error)
            return
        await self.remove_files_of_removed()
        log.info("removed disposable %s (auto_cleanup)", self)
        await save_app(app)


async def remove_stale(app: Qubes) -> list[str]:
    """Remove the auto_cleanup DispVMs that are not running (left by an unclean stop).

    One that cannot be removed (another VM or a global property still refers to
    it, say as netvm) stays, and the log says why: it never stops qubesd from
    starting. Returns the names of those removed.
    """
    stale = [vm for vm in app.domains
             if isinstance(vm, DispVM) and vm.auto_cleanup and not vm.is_running()]
    removed: list[str] = []
    refusals: dict[str, str] = {}
    progress = True
    while stale and progress:  # one stale DispVM may be the netvm of another
        progress = False
        for vm in list(stale):
            try:
                await vm.remove()
            except exc.QubesException as error:
                refusals[vm.name] = str(error)
                continue
            except Exception:
                log.exception("keeping %s, a disposable VM left behind by an unclean stop: "
                              "removing it failed", vm.name)
                stale.remove(vm)
                continue
            log.info("removed %s: a disposable VM left behind by an unclean stop", vm.name)
            stale.remove(vm)
            removed.append(vm.name)
            progress = True
    for vm in stale:
        log.warning("keeping %s, a disposable VM left behind by an unclean stop: %s",
                    vm.name, refusals.get(vm.name, "unknown reason"))
    if removed:
        app.save()
    return removed
