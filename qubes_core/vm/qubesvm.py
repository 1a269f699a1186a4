"""Properties and rules shared by every VM that runs (all classes but dom0).

The property set, its types, defaults and ``default=`` flags are those of Qubes
R4.4's QubesVM, so that its client (``qvm-prefs``, ``qvm-ls``, the GUI tools)
reads and writes them unchanged. Values that Qubes reads from the hypervisor
(``xid``, ``stubdom_xid``, ``start_time``) come from the runtime and are never
stored.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.devices import validate_denied_list
from qubes_core.events import handler
from qubes_core.properties import (
    Property,
    PropertyHolder,
    StatelessProperty,
    VMProperty,
    optional_int_type,
    read_only,
)
from qubes_core.vm import volumes
from qubes_core.vm.base import BaseVM
from qubes_core.vm.lifecycle import LifecycleMixin
from qubes_core.vm.network import (  # noqa: F401  (re-exported for the VM classes)
    NetworkMixin,
    netvm_chain,
    netvm_loop,
    validate_netvm,
)

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.storage import Volume

VIRT_MODES = ("hvm", "pv", "pvh")
KERNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
BOOTMODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
USER_RE = re.compile(r"^[A-Za-z0-9_+,.-]{1,64}$")
MAX_KERNELOPTS = 512
# Memory is given in MiB; the runtime takes KiB in 64 bits: far above any machine.
MAX_MEMORY_MIB = 2**32
# Above what any hypervisor gives one VM (Xen: 128 for HVM, 512 for PVH), whatever
# the runtime says.
MAX_VCPUS = 512


def from_template(name: str, fallback: Any) -> Any:
    """Default: the template's value if the VM has a template, else ``fallback``."""

    def default(vm: QubesVM) -> Any:
        template = vm.template
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


@functools.cache
def host_memory_mib() -> int:
    """Memory of the machine qubesd runs on, in MiB (0 if it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def validate_kernel(holder: PropertyHolder, prop: Any, value: str) -> str:
    """A kernel version installed in the kernel pool; ``""`` for none.

    Whether it is installed is checked on a change, not while qubes.xml loads: a
    file names kernels of the machine it was written on.
    """
    if value == "":
        return value
    if not KERNEL_RE.match(value):
        raise ValueError(f"kernel {value!r} must be a version directory name, not a path")
    app = holder.owning_app()
    if not holder.events_enabled:
        return value
    pool = app.pools.get(app.default_pool_kernel)
    installed = pool.kernels() if pool is not None else None
    if installed is not None and value not in installed:
        raise exc.QubesPropertyValueError(
            holder, prop, value,
            f"kernel {value!r} is not installed in pool {pool.name!r} (installed: "
            f"{', '.join(installed) or 'none'})")
    return value


def _validate_vcpus(vm: QubesVM, prop: Any, value: int) -> int:
    """vcpus: positive, at most :data:`MAX_VCPUS`, and at most what the runtime accepts
    (checked on a change, not while qubes.xml loads: the file may come from a larger
    machine)."""
    _positive(vm, prop, value)
    limit = MAX_VCPUS
    if vm.events_enabled:
        limit = min(limit, vm.app.runtime.max_vcpus() or MAX_VCPUS)
    if value > limit:
        raise exc.QubesPropertyValueError(
            vm, prop, value, f"{value} vCPUs are more than the {limit} the "
                             f"{vm.app.runtime.name} runtime accepts")
    return value


def _validate_memory(vm: QubesVM, prop: Any, value: int) -> int:
    """memory: positive, at most maxmem while memory balancing is on (maxmem > 0)."""
    _positive(vm, prop, value)
    if value > MAX_MEMORY_MIB:
        raise ValueError(f"{value} MiB is more than {MAX_MEMORY_MIB} MiB")
    maxmem = vm.property_own_value("maxmem")  # a default maxmem follows memory
    if vm.events_enabled and maxmem and maxmem < value:
        raise exc.QubesPropertyValueError(
            vm, prop, value, f"memory of {vm} cannot be above its maxmem ({maxmem} MiB)")
    return value


def _validate_maxmem(vm: QubesVM, prop: Any, value: int) -> int:
    _non_negative(vm, prop, value)
    if value > MAX_MEMORY_MIB:
        raise ValueError(f"{value} MiB is more than {MAX_MEMORY_MIB} MiB")
    if vm.events_enabled and 0 < value < vm.memory:
        raise exc.QubesPropertyValueError(
            vm, prop, value, f"maxmem of {vm} cannot be below its memory ({vm.memory} MiB); "
            "0 turns memory balancing off")
    return value


def _default_maxmem(vm: QubesVM) -> int:
    """As Qubes: 0 with PCI devices; ten times memory for Linux, else 4000, capped at half
    the host's memory; a template's value first. Unlike Qubes, never below the VM's
    own memory: a default must not make the VM's settings contradict each other."""
    if vm.devices["pci"]:
        return 0
    template = vm.template
    if template is not None:
        default = template.maxmem
    else:
        default = vm.memory * 10 if vm.features.get("os") == "Linux" else 4000
        half_host = host_memory_mib() // 2
        default = min(default, half_host) if half_host else default
    return max(default, vm.memory) if default else 0


def _validate_kernelopts(vm: QubesVM, prop: Any, value: str) -> str:
    if len(value) > MAX_KERNELOPTS or "\n" in value or "\0" in value:
        raise ValueError(f"kernelopts is one line of at most {MAX_KERNELOPTS} characters")
    return value


def _validate_user(vm: QubesVM, prop: Any, value: str) -> str:
    if not USER_RE.match(value):
        raise ValueError(f"user name {value!r} may hold only letters, digits and _ - + , .")
    return value


def validate_bootmode(vm: QubesVM, prop: Any, value: str) -> str:
    """A boot mode name (a ``boot-mode.kernelopts.NAME`` feature, or ``default``)."""
    if not BOOTMODE_RE.match(value):
        raise ValueError(f"boot mode {value!r} may hold only letters, digits, '_', '.', '-'")
    return value


def validate_keyboard_layout(vm: QubesVM, prop: Any, value: str) -> str:
    """``LAYOUT+VARIANT+OPTIONS``, e.g. ``us++`` or ``de+nodeadkeys+grp:alt_shift_toggle``."""
    parts = value.split("+")
    if (not value.isascii() or len(parts) != 3 or not parts[0].isalpha()
            or not re.match(r"^[A-Za-z0-9_-]*$", parts[1])
            or not re.match(r"^[A-Za-z0-9_:,-]*$", parts[2])):
        raise ValueError(f"keyboard layout {value!r} is not LAYOUT+VARIANT+OPTIONS like us++")
    return value


def validate_disposable_template(holder: Any, prop: Any, value: Any) -> Any:
    """A default_dispvm or management_dispvm must be an AppVM made for DispVMs."""
    if value is not None and not value.template_for_dispvms:
        raise exc.QubesPropertyValueError(
            holder, prop, value,
            f"{prop.__name__}: {value} is not a template for DispVMs "
            "(set its template_for_dispvms first)")
    return value


def _validate_virt_mode(vm: QubesVM, prop: Any, value: str) -> str:
    if value == "pvh" and vm.devices["pci"]:
        raise exc.QubesPropertyValueError(
            vm, prop, value,
            f"cannot set virt_mode of {vm} to pvh: it has PCI devices assigned "
            "(unassign them or use hvm)",
        )
    return value


def _default_virt_mode(vm: QubesVM) -> str:
    if vm.devices["pci"]:
        return "hvm"
    template = vm.template
    if template is not None:
        return template.virt_mode
    return "pvh"


def _default_bootmode(vm: QubesVM) -> str:
    """The active boot mode feature if its kernel options exist, else the template's
    ``appvm_default_bootmode``, else ``default``."""
    active = vm.features.get("boot-mode.active")
    if active is not None and (active == "default" or vm.features.check_with_template(
            f"boot-mode.kernelopts.{active}", None) is not None):
        return active
    subject = vm
    while subject.template is not None:
        mode = subject.template.appvm_default_bootmode
        if mode is not None and (mode == "default" or subject.features.check_with_template(
                f"boot-mode.kernelopts.{mode}", None) is not None):
            return mode
        subject = subject.template
    return "default"


def _default_keyboard_layout(vm: QubesVM) -> str:
    """The layout set on the nearest guivm up the chain, else ``us++``.

    The chain is walked, not recursed into: a VM may be its own guivm, or two VMs
    each other's, and the default must still be found.
    """
    seen = {id(vm)}
    guivm = vm.guivm
    while guivm is not None and id(guivm) not in seen:
        if guivm.property_is_set("keyboard_layout"):
            return str(guivm.property_own_value("keyboard_layout"))
        seen.add(id(guivm))
        guivm = guivm.guivm
    return "us++"


def _xid(vm: QubesVM) -> int:
    return vm.app.runtime.xid(vm) if vm.is_running() else -1


def _stubdom_xid(vm: QubesVM) -> int:
    if vm.virt_mode != "hvm" or not vm.is_running():
        return -1
    return vm.app.runtime.stubdom_xid(vm)


def _stubdom_uuid(vm: QubesVM) -> str:
    if _stubdom_xid(vm) == -1:
        return ""
    return vm.app.runtime.stubdom_uuid(vm)


class QubesVM(NetworkMixin, LifecycleMixin, BaseVM):
    """A VM that can run."""

    if TYPE_CHECKING:
        # What a VM is based on (a TemplateVM, or the AppVM a DispVM is made of) runs.
        template: QubesVM | None
    #: Boot mode of the VMs based on this one: None here, a property of templates.
    appvm_default_bootmode: str | None = None

    guivm = VMProperty(
        "guivm", allow_none=True, load_stage=4, default=lambda vm: vm.app.default_guivm,
        doc="VM that shows this VM's windows (dom0 by default); tagged guivm-NAME.")
    audiovm = VMProperty(
        "audiovm", allow_none=True, load_stage=4, default=lambda vm: vm.app.default_audiovm,
        doc="VM that plays this VM's sound (dom0 by default); tagged audiovm-NAME.")
    bootmode = Property("bootmode", type=str, load_stage=4, setter=validate_bootmode,
                        default=_default_bootmode,
                        doc="Boot mode (kernel options from boot-mode.* features).")
    installed_by_rpm = Property("installed_by_rpm", type=bool, default=False,
                                doc="Whether the VM was installed from a package.")
    memory = Property("memory", type=int, setter=_validate_memory,
                      default=from_template("memory", 400),
                      doc="Memory (MiB) given at start; at most maxmem unless that is 0.")
    maxmem = Property("maxmem", type=int, setter=_validate_maxmem, default=_default_maxmem,
                      doc="Maximum memory (MiB) the balancer may give; 0 disables it.")
    stubdom_mem = Property("stubdom_mem", type=int, setter=_positive, default=None,
                           doc="Memory (MiB) of the device model stub domain of an HVM; "
                               "empty for the default.")
    vcpus = Property("vcpus", type=int, setter=_validate_vcpus,
                     default=from_template("vcpus", 2),
                     doc="Number of virtual CPUs.")
    virt_mode = Property(
        "virt_mode", type=str, choices=VIRT_MODES, setter=_validate_virt_mode,
        default=_default_virt_mode,
        doc="Virtualisation mode: hvm when PCI devices are assigned, else the template's, "
            "else pvh.",
    )
    kernel = Property(
        "kernel", type=str, setter=validate_kernel,
        default=from_template("kernel", lambda vm: vm.app.default_kernel or ""),
        doc="Kernel version from dom0's kernel pool; empty to boot the VM's own kernel.",
    )
    kernelopts = Property("kernelopts", type=str, load_stage=4, setter=_validate_kernelopts,
                          default=from_template("kernelopts", ""),
                          doc="Extra kernel command line options.")
    debug = Property("debug", type=bool, default=False,
                     doc="Debug mode: keep the console and verbose boot output.")
    default_user = Property("default_user", type=str, setter=_validate_user,
                            default=from_template("default_user", "user"),
                            doc="User that qrexec runs services as by default.")
    qrexec_timeout = Property(
        "qrexec_timeout", type=int, setter=_positive,
        default=from_template("qrexec_timeout", lambda vm: vm.app.default_qrexec_timeout),
        doc="Seconds to wait for the qrexec agent at start.",
    )
    shutdown_timeout = Property(
        "shutdown_timeout", type=int, setter=_positive,
        default=from_template("shutdown_timeout", lambda vm: vm.app.default_shutdown_timeout),
        doc="Seconds to wait for the VM to shut down.",
    )
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
        "default_dispvm", allow_none=True, load_stage=4, setter=validate_disposable_template,
        default=lambda vm: vm.app.default_dispvm,
        doc="AppVM whose DispVMs this VM starts by default.",
    )
    management_dispvm = VMProperty(
        "management_dispvm", allow_none=True, load_stage=4,
        setter=validate_disposable_template,
        default=from_template("management_dispvm", lambda vm: vm.app.management_dispvm),
        doc="AppVM whose DispVMs configure this VM through Salt.",
    )
    updateable = Property(
        "updateable", type=bool, setter=read_only, persisted=False,
        default=lambda vm: not vm.has_property("template"),
        doc="Whether changes to the root volume persist (no template).")
    devices_denied = Property(
        "devices_denied", type=str, setter=lambda vm, prop, value: validate_denied_list(value),
        default="", doc="Device interfaces never attached to this VM (see "
                        "admin.vm.device.denied.*).")
    keyboard_layout = Property(
        "keyboard_layout", type=str, setter=validate_keyboard_layout,
        default=_default_keyboard_layout,
        doc="Keyboard layout LAYOUT+VARIANT+OPTIONS; the guivm's by default.")
    xid = StatelessProperty("xid", _xid, type=int, reads_runtime=True,
                            doc="Hypervisor id of the running VM; -1 when halted.")
    stubdom_xid = StatelessProperty(
        "stubdom_xid", _stubdom_xid, type=int, reads_runtime=True,
        doc="Hypervisor id of the device model stub domain of a running HVM; else -1.")
    stubdom_uuid = StatelessProperty(
        "stubdom_uuid", _stubdom_uuid, type=str, reads_runtime=True,
        doc="UUID of the device model stub domain of a running HVM; else empty.")
    start_time = StatelessProperty(
        "start_time", lambda vm: vm.app.runtime.start_time(vm), reads_runtime=True,
        doc="Time the VM was started (seconds since the epoch); None while halted. Read "
            "from the runtime, never stored.",
    )

    def __init__(self, app: Qubes, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)

    @property
    def dir_path(self) -> Path:
        """Directory of the VM's own files (firewall.xml, logs): ``BASE/appvms/NAME``
        (the class's ``vid_dir``)."""
        return self.app.base_dir / self.vid_dir / self.name

    # --- networking -------------------------------------------------------

    @property
    def firewall(self) -> Any:
        """The VM's firewall rules (``qubes_core.firewall.Firewall``), from its firewall.xml."""
        from qubes_core.firewall import firewall_of

        return firewall_of(self)

    # --- devices ----------------------------------------------------------

    @handler("device-pre-assign:pci")
    def _on_pre_assign_pci(self, event: str, device: Any) -> None:
        if self.property_is_set("virt_mode") and self.virt_mode == "pvh":
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
    def volumes(self) -> dict[str, Volume]:
        """The VM's volumes by name (``qubes_core.storage.Volume``)."""
        return self.storage.volumes
