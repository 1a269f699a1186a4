"""The rules of each running VM, in its netvm's QubesDB, where the firewall agent reads them.

For a VM with address IP, the netvm's QubesDB holds ``/qubes-firewall/IP/policy``,
``/qubes-firewall/IP/0000``, ``0001``, ... and, written last, an empty
``/qubes-firewall/IP``: the agent's signal that the set is complete. A VM's
entries exist while it and its netvm run; what was written where is
remembered, so a change of netvm or address removes the old entries exactly.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from qubes_core.firewall.vmfirewall import firewall_of

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.qubesvm import QubesVM

log = logging.getLogger("qubes.firewall.export")

ROOT = "/qubes-firewall/"


def addresses(vm: QubesVM) -> list[tuple[int, str]]:
    """The VM's addresses, as (family, address); IPv6 when the model has ``ip6``."""
    return [(family, str(address)) for family, address in ((4, vm.ip), (6, vm.ip6))
            if address]


class FirewallExport:
    """Which VM's rules are in which netvm's QubesDB, for one app."""

    def __init__(self, app: Qubes):
        self.app = app
        # vm -> (netvm, base keys written there)
        self._exported: weakref.WeakKeyDictionary[QubesVM, tuple[QubesVM, list[str]]] = (
            weakref.WeakKeyDictionary())

    def exported_to(self, vm: QubesVM) -> QubesVM | None:
        """The netvm that holds ``vm``'s rules now, or None."""
        record = self._exported.get(vm)
        return record[0] if record else None

    def refresh(self, vm: QubesVM, running: bool | None = None,
                netvm_running: bool | None = None) -> bool:
        """Write ``vm``'s rules into its netvm if both run; remove stale entries.

        ``running`` and ``netvm_running`` override the runtime's word (a VM, or the
        netvm whose QubesDB was just made, is being started).
        """
        netvm = vm.netvm
        if running is None:
            running = netvm is not None and vm.is_running()
        if netvm is not None and netvm_running is None:
            netvm_running = netvm.is_running()
        if not running or netvm is None or netvm.qdb is None or not netvm_running:
            self.withdraw(vm)
            return False
        entries = {}
        firewall = firewall_of(vm)
        bases = []
        for family, address in addresses(vm):
            base = f"{ROOT}{address}"
            bases.append(base)
            entries[base] = firewall.qdb_entries(address_family=family)
        old = self._exported.get(vm)
        if old is not None and (old[0] is not netvm or old[1] != bases):
            self.withdraw(vm)
        qdb = netvm.qdb
        for base, values in entries.items():
            # The rules go first, the empty "done" key last: the agent reloads on it.
            qdb.rm(base + "/")
            for key, value in values.items():
                qdb.write(f"{base}/{key}", value)
            qdb.write(base, "")
        self._exported[vm] = (netvm, bases)
        log.debug("exported firewall of %s to %s (%s)", vm, netvm, ", ".join(bases))
        return True

    def withdraw(self, vm: QubesVM) -> None:
        """Remove ``vm``'s entries from the netvm that holds them."""
        record = self._exported.pop(vm, None)
        if record is None:
            return
        netvm, bases = record
        if netvm.qdb is None:
            return
        for base in bases:
            netvm.qdb.rm(base + "/")
            netvm.qdb.rm(base)
        log.debug("removed firewall of %s from %s", vm, netvm)

    def netvm_started(self, netvm: QubesVM) -> int:
        """``netvm`` has a new QubesDB (it is starting): export its running VMs into it."""
        for vm, (holder, _) in list(self._exported.items()):
            if holder is netvm:
                del self._exported[vm]  # those keys went with the old QubesDB
        count = 0
        for vm in netvm.connected_vms:
            if vm.is_running() and self.refresh(vm, running=True, netvm_running=True):
                count += 1
        return count

    def netvm_stopped(self, netvm: QubesVM) -> None:
        """``netvm`` halted: what was written into it is gone with its QubesDB."""
        for vm, (holder, _) in list(self._exported.items()):
            if holder is netvm:
                self.withdraw(vm)

    def refresh_all(self, vms: Iterable[QubesVM]) -> int:
        """Refresh each of ``vms`` (a netvm changed under them); how many were exported."""
        return sum(1 for vm in vms if self.refresh(vm))


_exports: weakref.WeakKeyDictionary[Qubes, FirewallExport] = weakref.WeakKeyDictionary()


def export_of(app: Qubes) -> FirewallExport:
    """The one :class:`FirewallExport` of ``app``."""
    export = _exports.get(app)
    if export is None:
        export = _exports[app] = FirewallExport(app)
    return export
