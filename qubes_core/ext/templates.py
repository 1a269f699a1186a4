"""A VM runs on its template: its snapshot volumes follow every change of template.

Invariant: each ``snap_on_start`` volume of a template-based VM has as source
the volume of the same name of the VM's current template (a DispVM's: what its
AppVM's volume snapshots). Without it, a VM moved off a template keeps booting
the old one, and the old one can be removed under it. So a change of
``template`` (set or reset), and a change of ``default_template`` for the
AppVMs that follow it, re-bases those volumes, and those of the DispVMs built
on the VM; the change is refused while any of these VMs runs (a running volume
keeps the source it started on). An AppVM never ends up without a template,
and a VM whose volume is still another VM's source cannot be removed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeGuard

from qubes_core import exc
from qubes_core.ext import Extension, app_handler, vm_handler
from qubes_core.vm import volumes
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM

log = logging.getLogger("qubes.ext.templates")


def _in_model(vm: BaseVM) -> bool:
    """A VM being built (its constructor sets ``template``) has nothing to re-base yet."""
    return vm.app.domains.get(vm.qid) is vm and bool(vm.volume_config)


def based_on(vm: QubesVM) -> list[QubesVM]:
    """``vm`` and every VM built on it in turn (the DispVMs of an AppVM), each once."""
    found: list[QubesVM] = []
    pending = [vm]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        pending.extend(other for other in current.app.domains
                       if isinstance(other, QubesVM) and other is not current
                       and other.volume_config
                       and other.property_own_value("template") is current)
    return found


def follows_default(vm: BaseVM) -> TypeGuard[QubesVM]:
    """Whether the VM's template is the global ``default_template`` (not set on the VM)."""
    return (vm.has_property("template") and vm.property_get_def("template").has_default
            and not vm.property_is_set("template") and bool(vm.volume_config))


def _refuse_running(vms: list[QubesVM], what: str) -> None:
    busy = sorted(vm.name for vm in vms
                  if not vm.is_halted() or vm.volumes_in_use)
    if busy:
        raise exc.QubesVMNotHaltedError(
            vms[0], f"cannot {what}: {', '.join(busy)} must be halted first (a running VM "
                    "keeps the template it started on)")


def rebase(vm: QubesVM) -> None:
    """Re-base the snapshot volumes of ``vm`` and of the VMs built on it."""
    for each in based_on(vm):
        changed = volumes.rebase_snapshots(each)
        if changed:
            log.info("%s: volumes %s now snapshot %s", each, ", ".join(changed),
                     each.template)


class TemplatesExtension(Extension):
    """Keeps snapshot volumes on the current template; guards template removal."""

    @vm_handler("property-pre-set:template")
    def on_template_pre_set(self, vm: QubesVM, event: str, newvalue: Any, oldvalue: Any = None,
                            **kwargs: Any) -> None:
        if _in_model(vm) and newvalue is not oldvalue:
            _refuse_running(based_on(vm), f"change the template of {vm}")

    @vm_handler("property-pre-reset:template")
    def on_template_pre_reset(self, vm: QubesVM, event: str, oldvalue: Any = None,
                              **kwargs: Any) -> None:
        new = vm.property_get_default("template")
        if new is None:
            raise exc.QubesValueError(
                f"cannot reset the template of {vm}: there is no default_template (set "
                "another template instead)")
        if _in_model(vm) and new is not oldvalue:
            _refuse_running(based_on(vm), f"change the template of {vm}")

    @vm_handler("property-set:template", "property-reset:template")
    def on_template_set(self, vm: QubesVM, event: str, **kwargs: Any) -> None:
        if _in_model(vm):
            rebase(vm)

    @app_handler("property-pre-set:default_template")
    def on_default_pre_set(self, app: Qubes, event: str, newvalue: Any, oldvalue: Any = None,
                           **kwargs: Any) -> None:
        self._check_default_change(app, newvalue, oldvalue)

    @app_handler("property-pre-reset:default_template")
    def on_default_pre_reset(self, app: Qubes, event: str, oldvalue: Any = None,
                             **kwargs: Any) -> None:
        self._check_default_change(app, app.property_get_default("default_template"),
                                   oldvalue)

    @staticmethod
    def _check_default_change(app: Qubes, newvalue: Any, oldvalue: Any) -> None:
        followers = [vm for vm in app.domains if follows_default(vm)]
        if not followers or newvalue is oldvalue:
            return
        if newvalue is None:
            names = ", ".join(sorted(vm.name for vm in followers))
            raise exc.QubesValueError(
                f"cannot clear default_template: {names} take their template from it (set "
                "their template first)")
        _refuse_running([vm for follower in followers for vm in based_on(follower)],
                        f"change default_template to {newvalue}")

    @app_handler("property-set:default_template", "property-reset:default_template")
    def on_default_set(self, app: Qubes, event: str, **kwargs: Any) -> None:
        for vm in app.domains:
            if follows_default(vm):
                rebase(vm)

    @app_handler("domain-pre-delete")
    def on_pre_delete(self, app: Qubes, event: str, vm: BaseVM, **kwargs: Any) -> None:
        """Refuse to remove a VM whose volume another VM still snapshots."""
        mine = {(config.get("pool"), config.get("vid"))
                for config in vm.volume_config.values() if config.get("vid")}
        users = sorted(
            f"{other.name} ({name})" for other in app.domains if other is not vm
            for name, config in other.volume_config.items()
            if config.get("snap_on_start")
            and (config.get("pool"), config.get("source")) in mine)
        if users:
            raise exc.QubesVMInUseError(
                vm, f"cannot remove {vm}: its volumes are the source of {', '.join(users)}")
