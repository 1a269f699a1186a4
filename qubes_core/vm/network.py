"""Network properties of a VM: its netvm, addresses, and what it shows other VMs.

The addresses follow Qubes' scheme exactly (``10.137.X.Y`` from the qid,
``10.138.X.Y`` from a DispVM's dispid, the ``fd09:24ef:4179::a89:N`` IPv6 prefix,
DNS at ``10.139.1.1`` and ``.2``), because the VMs' own agents and users'
firewall rules rely on them. A VM is networked when it has a netvm or provides
network itself (sys-net has no netvm and still has an address). The netvm graph
never has a loop: a change that would make one is refused; a loaded qubes.xml is
checked as a whole once every VM is there.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from qubes_core import exc
from qubes_core.events import handler
from qubes_core.properties import Property, StatelessProperty, VMProperty
from qubes_core.vm.base import BaseVM

MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
IPV6_PREFIX = "fd09:24ef:4179:0000"
DNS_SERVERS = ("10.139.1.1", "10.139.1.2")


def vmid_to_ipv4(prefix: str, vmid: int) -> str:
    """Qubes' address of VM number ``vmid``: no ``.0`` or ``.255`` from 255 on."""
    if vmid < 255:
        return f"{prefix}.{(vmid >> 8) & 0xff}.{vmid & 0xff}"
    vmid -= 1
    return f"{prefix}.{vmid // 254}.{vmid % 254 + 1}"


def _validate_ip(holder: Any, prop: Any, value: str) -> str:
    if value == "":
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _validate_ip6(holder: Any, prop: Any, value: str) -> str:
    if value == "":
        return value
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv6 address") from None


def _validate_mac(holder: Any, prop: Any, value: str) -> str:
    value = value.lower()
    if not MAC_RE.match(value):
        raise ValueError(f"{value!r} is not a MAC address like 00:16:3e:5e:6c:00")
    if int(value[:2], 16) & 1:  # ff:ff:ff:ff:ff:ff and every other group address
        raise ValueError(f"{value!r} is a broadcast or multicast address, not a NIC's")
    return value


def _default_netvm(vm: NetworkMixin) -> Any:
    """The global default_netvm, unless its chain leads back to ``vm`` (then None).

    Only explicitly set netvms are followed: a VM on the default points back at the
    default netvm, which is already on the path.
    """
    candidate = vm.app.default_netvm
    current, seen = candidate, set()
    while current is not None and id(current) not in seen:
        if current is vm:
            return None
        seen.add(id(current))
        current = current.property_own_value("netvm")
    return candidate


def follows_default_netvm(vm: NetworkMixin) -> bool:
    """Whether ``vm``'s netvm is the global default_netvm (not set, and defaulting to it)."""
    return (vm.has_property("netvm") and vm.property_get_def("netvm").defaults_to(_default_netvm)
            and not vm.property_is_set("netvm"))


def netvm_chain(vm: NetworkMixin) -> list[Any]:
    """The VMs traffic of ``vm`` passes through: its netvm, that one's netvm, ..."""
    chain: list[Any] = []
    current = vm.netvm
    while current is not None and current not in chain:
        chain.append(current)
        current = current.netvm
    return chain


def netvm_loop(vm: NetworkMixin) -> list[str]:
    """The names along a netvm loop that starts at ``vm``; empty when there is none."""
    current = vm.property_own_value("netvm")
    path, names = [vm], [vm.name]
    while current is not None:
        names.append(current.name)
        if current is vm:
            return names
        if current in path:
            return []  # a loop further up the chain: reported from its own VMs
        path.append(current)
        current = current.netvm
    return []


def validate_netvm(vm: NetworkMixin, prop: Any, value: Any) -> Any:
    """Refuse a netvm that does not provide network or would make a loop; None means offline.

    Both refusals are ``QubesValueError``, as Qubes raises them (clients branch on it).
    """
    if value is None:
        return None
    if not value.provides_network:
        raise exc.QubesValueError(
            f"cannot set netvm of {vm} to {value}: {value} does not provide network "
            "(set its provides_network first)")
    # While qubes.xml loads, the VMs it names later are not there yet: the loader
    # checks the whole graph for loops once everything is loaded.
    if vm.events_enabled and (value is vm or vm in netvm_chain(value)):
        raise exc.QubesValueError(f"cannot set netvm of {vm} to {value}: it would make a loop")
    return value


def is_networked(vm: NetworkMixin) -> bool:
    """Whether ``vm`` reaches a network: it has a netvm, or it provides network itself."""
    return bool(vm.provides_network) or vm.netvm is not None


def _default_ip(vm: NetworkMixin) -> str | None:
    if not is_networked(vm):
        return None
    prefix, _group, number = vm.address_number()
    return vmid_to_ipv4(prefix, number)


def _default_ip6(vm: NetworkMixin) -> str | None:
    if not is_networked(vm) or not vm.features.check_with_netvm("ipv6", False):
        return None
    _prefix, group, number = vm.address_number()
    return str(ipaddress.IPv6Address(f"{IPV6_PREFIX}::{group}:{number:x}"))


def _netmask(vm: NetworkMixin) -> str | None:
    return "255.255.255.255" if is_networked(vm) else None


def _visible_ip(vm: NetworkMixin) -> str | None:
    return vm.features.check_with_template("net.fake-ip", None) or vm.ip


def _visible_gateway(vm: NetworkMixin) -> str | None:
    fake = vm.features.check_with_template("net.fake-gateway", None)
    return fake or (vm.netvm.gateway if vm.netvm is not None else None)


def _visible_gateway6(vm: NetworkMixin) -> str | None:
    if vm.features.check_with_netvm("ipv6", False) and vm.netvm is not None:
        return vm.netvm.gateway6
    return None


def _visible_netmask(vm: NetworkMixin) -> str | None:
    fake = vm.features.check_with_template("net.fake-netmask", None)
    return fake or (_netmask(vm.netvm) if vm.netvm is not None else None)


def _gateway(vm: NetworkMixin) -> str | None:
    return vm.visible_ip if vm.provides_network else None


def _gateway6(vm: NetworkMixin) -> str | None:
    if vm.features.check_with_netvm("ipv6", False) and vm.provides_network:
        return vm.visible_ip6
    return None


def _dns(vm: NetworkMixin) -> tuple[str, ...] | None:
    return DNS_SERVERS if vm.netvm is not None or vm.provides_network else None


class NetworkMixin(BaseVM):
    """The network properties every running VM class has."""

    netvm = VMProperty(
        "netvm", allow_none=True, default=_default_netvm, setter=validate_netvm, load_stage=4,
        doc="VM that gives this one network; None means no network. Default: the global "
            "default_netvm.",
    )
    provides_network = Property(
        "provides_network", type=bool, default=False,
        doc="Whether this VM can be the netvm of other VMs.",
    )
    ip: Property[str | None] = Property(
        "ip", type=str, setter=_validate_ip, default=_default_ip, clone=False,
        doc="IPv4 address of the VM; computed from its qid (a DispVM's from its dispid) when "
            "it is networked.")
    ip6: Property[str | None] = Property(
        "ip6", type=str, setter=_validate_ip6, default=_default_ip6, clone=False,
        doc="IPv6 address of the VM, when its netvm chain has the ipv6 feature.")
    mac = Property("mac", type=str, setter=_validate_mac, default="00:16:3e:5e:6c:00",
                   doc="MAC address of the VM's network interface.")
    visible_ip = StatelessProperty("visible_ip", _visible_ip,
                                   doc="IP address of this VM as the VM sees it.")
    visible_ip6 = StatelessProperty("visible_ip6", lambda vm: vm.ip6,
                                    doc="IPv6 address of this VM as the VM sees it.")
    visible_gateway = StatelessProperty("visible_gateway", _visible_gateway,
                                        doc="Default gateway as the VM sees it.")
    visible_gateway6 = StatelessProperty("visible_gateway6", _visible_gateway6,
                                         doc="Default IPv6 gateway as the VM sees it.")
    visible_netmask = StatelessProperty("visible_netmask", _visible_netmask,
                                        doc="Netmask as the VM sees it.")
    gateway = StatelessProperty("gateway", _gateway,
                                doc="Gateway of the VMs that use this one as netvm.")
    gateway6 = StatelessProperty("gateway6", _gateway6,
                                 doc="IPv6 gateway of the VMs that use this one as netvm.")
    dns = StatelessProperty("dns", _dns, doc="DNS servers of this VM.")

    @property
    def connected_vms(self) -> list[Any]:
        """VMs whose netvm (set or default) is this one."""
        return [vm for vm in self.app.domains
                if vm is not self and vm.netvm is self]

    def is_networked(self) -> bool:
        """Whether the VM can reach a network: it has a netvm or provides network."""
        return is_networked(self)

    def address_number(self) -> tuple[str, str, int]:
        """What the default addresses are made of: the IPv4 /16 (``10.137``), the IPv6
        group (``a89``) and the VM's number in them (its qid)."""
        return ("10.137", "a89", self.qid)

    @handler("property-pre-set:provides_network")
    def _on_pre_set_provides_network(self, event: str, name: str, newvalue: bool,
                                     oldvalue: Any = None) -> None:
        if not newvalue and self.connected_vms:
            users = ", ".join(sorted(vm.name for vm in self.connected_vms))
            raise exc.QubesValueError(
                f"cannot clear provides_network of {self}: VMs use it as netvm: {users}"
            )

    @handler("property-pre-reset:provides_network")
    def _on_pre_reset_provides_network(self, event: str, name: str,
                                       oldvalue: Any = None) -> None:
        self._on_pre_set_provides_network(event, name, False)
