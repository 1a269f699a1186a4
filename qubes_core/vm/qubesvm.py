"""Properties and rules shared by every VM that runs (all classes but dom0)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from qubes_core import exc
from qubes_core.events import handler
from qubes_core.properties import Property, VMProperty, optional_int_type
from qubes_core.vm import volumes
from qubes_core.vm.base import BaseVM
from qubes_core.vm.lifecycle import LifecycleMixin

MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
VIRT_MODES = ("hvm", "pv", "pvh")


def from_template(name: str, fallback: Any) -> Any:
    """Default: the template's value if the VM has a template, else ``fallback``."""

    def default(vm: Any) -> Any:
        template = getattr(vm, "template", None)
        if template is not None:
            return getattr(template, name)
        return fallback(vm) if callable(fallback) else fallback

    return default


def _positive(holder: Any, prop: Any, value: int) -> int:
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative(holder: Any, prop: Any, value: int) -> int:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _validate_ip(holder: Any, prop: Any, value: str) -> str:
    if value == "":
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _validate_mac(holder: Any, prop: Any, value: str) -> str:
    if not MAC_RE.match(value.lower()):
        raise ValueError(f"{value!r} is not a MAC address like 00:16:3e:5e:6c:00")
    return value.lower()


def _validate_kernel(holder: Any, prop: Any, value: str) -> str:
    if value and ("/" in value or value.startswith(".")):
        raise ValueError(f"kernel {value!r} must be a version directory name, not a path")
    return value


def _validate_virt_mode(vm: Any, prop: Any, value: str) -> str:
    if value == "pvh" and vm.devices["pci"]:
        raise exc.QubesPropertyValueError(
            vm, prop, value,
            f"cannot set virt_mode of {vm} to pvh: it has PCI devices assigned "
            "(unassign them or use hvm)",
        )
    return value


def _default_virt_mode(vm: Any) -> str:
    if vm.devices["pci"]:
        return "hvm"
    template = getattr(vm, "template", None)
    if template is not None:
        return template.virt_mode
    return "pvh"


def _default_netvm(vm: Any) -> Any:
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
        current = current._property_values.get("netvm")
    return candidate


def _default_ip(vm: Any) -> str | None:
    if vm.netvm is None:
        return None
    dispid = getattr(vm, "dispid", None)
    if dispid is not None:
        return f"10.138.{(dispid >> 8) & 0xff}.{dispid & 0xff}"
    return f"10.137.{(vm.qid >> 8) & 0xff}.{vm.qid & 0xff}"


def _default_start_time(vm: Any) -> float | None:
    return vm.app.runtime.start_time(vm)


def _read_only(vm: Any, prop: Any, value: Any) -> Any:
    raise exc.QubesPropertyValueError(vm, prop, value, f"property {prop.__name__!r} is read-only")


def netvm_chain(vm: Any) -> list[Any]:
    """The VMs traffic of ``vm`` passes through: its netvm, that one's netvm, ..."""
    chain: list[Any] = []
    current = getattr(vm, "netvm", None)
    while current is not None and current not in chain:
        chain.append(current)
        current = getattr(current, "netvm", None)
    return chain


def validate_netvm(vm: Any, prop: Any, value: Any) -> Any:
    """Refuse a netvm that does not provide network or would make a loop; None means offline."""
    if value is None:
        return None
    if not getattr(value, "provides_network", False):
        raise exc.QubesPropertyValueError(
            vm, prop, value,
            f"cannot set netvm of {vm} to {value}: {value} does not provide network "
            "(set its provides_network first)",
        )
    if value is vm or vm in netvm_chain(value):
        raise exc.QubesPropertyValueError(
            vm, prop, value, f"cannot set netvm of {vm} to {value}: it would make a loop"
        )
    return value


class QubesVM(LifecycleMixin, BaseVM):
    """A VM that can run."""

    default_volumes = ("root", "private", "volatile", "kernel")

    netvm = VMProperty(
        "netvm", allow_none=True, default=_default_netvm, setter=validate_netvm, load_stage=4,
        doc="VM that gives this one network; None means no network. Default: the global "
            "default_netvm.",
    )
    provides_network = Property(
        "provides_network", type=bool, default=False,
        doc="Whether this VM can be the netvm of other VMs.",
    )
    memory = Property("memory", type=int, setter=_positive,
                      default=from_template("memory", 400),
                      doc="Memory (MiB) given at start.")
    maxmem = Property("maxmem", type=int, setter=_non_negative,
                      default=from_template("maxmem", 4000),
                      doc="Maximum memory (MiB) the balancer may give; 0 disables it.")
    vcpus = Property("vcpus", type=int, setter=_positive, default=from_template("vcpus", 2),
                     doc="Number of virtual CPUs.")
    virt_mode = Property(
        "virt_mode", type=str, choices=VIRT_MODES, setter=_validate_virt_mode,
        default=_default_virt_mode,
        doc="Virtualisation mode: hvm when PCI devices are assigned, else the template's, "
            "else pvh.",
    )
    kernel = Property(
        "kernel", type=str, setter=_validate_kernel,
        default=from_template("kernel", lambda vm: vm.app.default_kernel or ""),
        doc="Kernel version from dom0's kernel pool; empty to boot the VM's own kernel.",
    )
    kernelopts = Property("kernelopts", type=str, default=from_template("kernelopts", ""),
                          doc="Extra kernel command line options.")
    autostart = Property("autostart", type=bool, default=False,
                         doc="Start the VM when the system boots.")
    include_in_backups = Property("include_in_backups", type=bool, default=True,
                                  doc="Include the VM in backups by default.")
    backup_timestamp = Property(
        "backup_timestamp", type=optional_int_type,
        default=None, clone=False,
        doc="Time of the last backup, in seconds since the epoch; empty if never.",
    )
    default_dispvm = VMProperty(
        "default_dispvm", allow_none=True, load_stage=4,
        default=lambda vm: vm.app.default_dispvm,
        doc="AppVM whose DispVMs this VM starts by default.",
    )
    management_dispvm = VMProperty(
        "management_dispvm", allow_none=True, load_stage=4,
        default=lambda vm: vm.app.management_dispvm,
        doc="AppVM whose DispVMs configure this VM through Salt.",
    )
    default_user = Property("default_user", type=str,
                            default=from_template("default_user", "user"),
                            doc="User that qrexec runs services as by default.")
    qrexec_timeout = Property(
        "qrexec_timeout", type=int, setter=_positive,
        default=lambda vm: vm.app.default_qrexec_timeout,
        doc="Seconds to wait for the qrexec agent at start.",
    )
    debug = Property("debug", type=bool, default=False,
                     doc="Debug mode: keep the console and verbose boot output.")
    ip = Property("ip", type=str, setter=_validate_ip, default=_default_ip, clone=False,
                  doc="IPv4 address of the VM; computed from its qid by default.")
    mac = Property("mac", type=str, setter=_validate_mac, default="00:16:3e:5e:6c:00",
                   doc="MAC address of the VM's network interface.")
    start_time = Property(
        "start_time", persisted=False, clone=False, setter=_read_only,
        default=_default_start_time,
        doc="Time the VM was started (seconds since the epoch); None while halted. Read "
            "from the runtime, never stored.",
    )

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)

    @property
    def dir_path(self) -> Path:
        """Directory of the VM's own files (firewall.xml, logs): ``BASE/appvms/NAME``."""
        return self.app.base_dir / volumes.VID_DIRS.get(type(self).__name__, "appvms") / self.name

    # --- networking -------------------------------------------------------

    @property
    def firewall(self) -> Any:
        """The VM's firewall rules (``qubes_core.firewall.Firewall``), from its firewall.xml."""
        from qubes_core.firewall import firewall_of

        return firewall_of(self)

    @property
    def connected_vms(self) -> list[Any]:
        """VMs whose netvm (set or default) is this one."""
        return [vm for vm in self.app.domains
                if vm is not self and getattr(vm, "netvm", None) is self]

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

    # --- devices ----------------------------------------------------------

    @handler("device-pre-assign:pci")
    def _on_pre_assign_pci(self, event: str, device: Any) -> None:
        if "virt_mode" in self._property_values and self.virt_mode == "pvh":
            raise exc.QubesValueError(
                f"cannot assign PCI device {device.ident} to {self}: its virt_mode is pvh "
                "(set it to hvm first)"
            )

    # --- volumes ----------------------------------------------------------

    def init_volume_config(self) -> None:
        """Fill ``volume_config`` from the class defaults (called once, at creation)."""
        self.volume_config = volumes.default_config(self)

    @property
    def storage(self) -> Any:
        """The VM's volumes as a whole (``qubes_core.storage.Storage``): start, stop, ..."""
        from qubes_core.storage.vmstorage import vm_storage

        return vm_storage(self)

    @property
    def volumes(self) -> dict[str, Any]:
        """The VM's volumes by name (``qubes_core.storage.Volume``)."""
        return self.storage.volumes
