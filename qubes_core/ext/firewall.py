"""Firewall: keeps each running VM's rules exported to its netvm and expiring on time.

Reacts to the model: rule changes (``firewall-changed``), netvm and address
changes, VMs and netvms starting and stopping, DispVMs being created (they take
their AppVM's rules), and qubesd starting and stopping (the expiry schedule).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qubes_core.ext import Extension, app_handler, vm_handler
from qubes_core.firewall.expiry import schedule_of
from qubes_core.firewall.export import export_of
from qubes_core.firewall.vmfirewall import firewall_of, has_firewall
from qubes_core.firewall.xmlfile import FirewallFileError
from qubes_core.vm.dispvm import DispVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM
    from qubes_core.vm.qubesvm import QubesVM

log = logging.getLogger("qubes.ext.firewall")


class FirewallExtension(Extension):
    """Keeps the rules exported to netvms and the expiry schedule in step with the model."""

    # Events only a VM that runs fires (a firewall change, a start, a clone) are
    # handled as QubesVM's; those of every VM check :func:`has_firewall` first.

    # --- rules and addresses ----------------------------------------------

    @vm_handler("firewall-changed")
    def on_firewall_changed(self, vm: QubesVM, event: str, **kwargs: Any) -> None:
        export_of(vm.app).refresh(vm)
        schedule_of(vm.app).note_changed(vm)

    @vm_handler("property-set:netvm", "property-reset:netvm", "property-set:ip",
                "property-reset:ip", "property-set:ip6", "property-reset:ip6")
    def on_address_changed(self, vm: BaseVM, event: str, **kwargs: Any) -> None:
        if has_firewall(vm):
            export_of(vm.app).refresh(vm)

    @app_handler("property-set:default_netvm", "property-reset:default_netvm")
    def on_default_netvm_changed(self, app: Qubes, event: str, **kwargs: Any) -> None:
        followers = [vm for vm in app.domains
                     if has_firewall(vm) and vm.property_is_default("netvm")]
        export_of(app).refresh_all(followers)

    # --- lifecycle ----------------------------------------------------------

    @vm_handler("domain-start")
    def on_domain_start(self, vm: BaseVM, event: str, **kwargs: Any) -> None:
        if has_firewall(vm):
            export_of(vm.app).refresh(vm, running=True)

    @vm_handler("domain-qdb-create")
    def on_qdb_create(self, vm: QubesVM, event: str, **kwargs: Any) -> None:
        if vm.provides_network:
            export_of(vm.app).netvm_started(vm)

    @vm_handler("domain-shutdown")
    def on_domain_shutdown(self, vm: QubesVM, event: str, **kwargs: Any) -> None:
        export = export_of(vm.app)
        export.withdraw(vm)
        export.netvm_stopped(vm)

    @app_handler("domain-add")
    def on_domain_add(self, app: Qubes, event: str, vm: BaseVM, **kwargs: Any) -> None:
        """A new DispVM takes its AppVM's firewall (FACTS: DispVM)."""
        if not isinstance(vm, DispVM) or vm.template is None:
            return
        source = firewall_of(vm.template)
        if not source.has_file():
            return
        try:
            firewall_of(vm).clone_from(source)
        except FirewallFileError as err:
            # Never let a DispVM fall back to "allow all" because its AppVM's file is bad.
            log.error("%s gets no firewall rule (all traffic dropped): %s", vm, err)
            firewall_of(vm).set_rules([])

    @vm_handler("domain-cloned")
    def on_domain_cloned(self, vm: QubesVM, event: str, src: QubesVM, **kwargs: Any) -> None:
        """A clone takes the rules of the VM it was cloned from."""
        source = firewall_of(src)
        if source.has_file():
            firewall_of(vm).clone_from(source)

    @app_handler("domain-delete")
    def on_domain_delete(self, app: Qubes, event: str, vm: BaseVM, **kwargs: Any) -> None:
        if has_firewall(vm):
            export_of(app).withdraw(vm)
            export_of(app).netvm_stopped(vm)
            schedule_of(app).forget(vm)

    # --- qubesd -----------------------------------------------------------------

    @app_handler("qubesd-start")
    def on_qubesd_start(self, app: Qubes, event: str, **kwargs: Any) -> None:
        schedule = schedule_of(app)
        schedule.start()
        log.info("firewall expiry schedule built; next expiry at %s", schedule.next_expiry())

    @app_handler("qubesd-stop")
    async def on_qubesd_stop(self, app: Qubes, event: str, **kwargs: Any) -> None:
        await schedule_of(app).stop()
