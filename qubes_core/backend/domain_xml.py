"""A VM's libvirt domain XML, rendered from its properties with a jinja2 template.

The context is computed here (memory rules, boot method per virt_mode, disks
from the volume config, network from the netvm) so that the template stays a
plain picture of the XML. ``flavour`` picks the dialect: ``xen`` for Xen's
libvirt driver, ``test`` for libvirt's test driver, which accepts only its own
domain type and the os types ``hvm`` and ``xen``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.qubesvm import QubesVM

METADATA_NS = "https://www.qubes-os.org/libvirt"
TEMPLATE = "libvirt/xen.xml"
FLAVOURS = ("xen", "test")
PRODUCTION_KERNELS = Path("/var/lib/qubes/vm-kernels")
KERNEL_CMDLINE = ("root=/dev/mapper/dmroot ro nomodeset console=hvc0 rd_NO_PLYMOUTH "
                  "rd.plymouth.enable=0 plymouth.enable=0")
PVGRUB = {"pvh": "/usr/lib/xen/boot/pvgrub2-pvh", "pv": "/usr/lib/xen/boot/pvgrub2"}
HVMLOADER = "/usr/lib/xen/boot/hvmloader"
# Xen's (os type, machine) of each virt_mode, and the test driver's os type.
XEN_OS = {"hvm": ("hvm", "xenfv"), "pvh": ("xenpvh", "xenpvh"), "pv": ("linux", "xenpv")}
TEST_OS = {"hvm": "hvm", "pvh": "xen", "pv": "xen"}
# Guest block devices by volume, as the VM's agents expect them.
DISK_TARGETS = {"root": "xvda", "private": "xvdb", "volatile": "xvdc", "kernel": "xvdd"}


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("qubes_core.backend", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def kernels_dir(app: Qubes) -> Path:
    """Where dom0's VM kernels live when no kernel pool says: ``BASE/vm-kernels``."""
    store = app.store
    if store is None:
        return PRODUCTION_KERNELS
    return app.base_dir / "vm-kernels"


def _kernel_dir(vm: QubesVM) -> Path:
    """Directory of the VM's kernel: in its kernel volume's pool, else the default place."""
    config = vm.volume_config.get("kernel", {})
    pool = vm.app.pools.get(config.get("pool", "")) if config.get("pool") else None
    dir_path = pool.dir_path if pool is not None else None
    return Path(dir_path or kernels_dir(vm.app)) / vm.kernel


_NOT_KNOWN = object()


def _storage_path(vm: QubesVM, name: str) -> Any:
    """The image the storage layer gives volume ``name`` (None: none), or ``_NOT_KNOWN``."""
    try:
        volume = vm.volumes.get(name)
    except Exception:  # no storage layer, or a pool that is not there
        return _NOT_KNOWN
    if volume is None:
        return _NOT_KNOWN
    path = volume.block_device()
    return str(path) if path else None


def volume_path(vm: QubesVM, name: str, config: dict[str, Any]) -> str | None:
    """Path of the image the running VM sees for volume ``name`` (None: not attached).

    The storage layer's answer wins; without one, the file-reflink layout: a
    writable volume runs on ``VID-dirty.img``, a read-only one on ``VID.img``.
    """
    if name == "kernel" and not vm.kernel:
        return None
    from_storage = _storage_path(vm, name)
    if from_storage is not _NOT_KNOWN:
        return from_storage
    if name == "kernel":
        return str(_kernel_dir(vm) / "modules.img")
    vid = config.get("vid")
    if not vid:
        return None
    suffix = "-dirty.img" if config.get("rw", True) else ".img"
    pool = vm.app.pools.get(config.get("pool", ""))
    dir_path = pool.config.get("dir_path") if pool is not None else None
    return str(Path(dir_path or kernels_dir(vm.app).parent) / f"{vid}{suffix}")


def _disks(vm: QubesVM) -> list[dict[str, Any]]:
    disks = []
    extra = iter(f"xvd{letter}" for letter in "efghijklmnopqrstuvwxyz")
    order = sorted(vm.volume_config, key=lambda n: (n not in DISK_TARGETS,
                                                    DISK_TARGETS.get(n, ""), n))
    for name in order:
        config = vm.volume_config[name]
        path = volume_path(vm, name, config)
        if path is None:
            continue
        disks.append({
            "name": name,
            "path": path,
            "target": DISK_TARGETS.get(name) or next(extra),
            "readonly": name == "kernel" or not config.get("rw", True),
        })
    return disks


def _os(vm: QubesVM, flavour: str) -> dict[str, Any]:
    virt_mode = vm.virt_mode
    os_type, machine = XEN_OS[virt_mode]
    if flavour == "test":
        os_type = TEST_OS[virt_mode]
    info: dict[str, Any] = {"type": os_type, "machine": machine, "loader": None,
                            "kernel": None, "initrd": None, "cmdline": None}
    if virt_mode == "hvm" and flavour == "xen":
        info["loader"] = HVMLOADER
    if vm.kernel:
        directory = _kernel_dir(vm)
        info["kernel"] = str(directory / "vmlinuz")
        info["initrd"] = str(directory / "initramfs")
        info["cmdline"] = " ".join(filter(None, (KERNEL_CMDLINE, vm.kernelopts.strip())))
    elif virt_mode in PVGRUB:
        # The VM boots its own kernel through pvgrub2, which reads its root volume.
        info["kernel"] = PVGRUB[virt_mode]
    return info


def _memory(vm: QubesVM) -> tuple[int, int]:
    """(memory, maxmem) in MiB: no balancing with PCI devices or maxmem 0."""
    memory = vm.memory
    maxmem = vm.maxmem if vm.maxmem and not vm.devices["pci"] else memory
    return memory, max(memory, maxmem)


def _interface(vm: QubesVM) -> dict[str, Any] | None:
    netvm = vm.netvm
    if netvm is None:
        return None
    return {"mac": vm.mac, "ip": vm.ip, "backend": netvm.name}


def _pci_devices(vm: QubesVM) -> list[dict[str, str]]:
    devices = []
    for assignment in vm.devices["pci"]:
        bus, _, rest = assignment.ident.partition("_")
        slot, _, function = rest.partition(".")
        devices.append({"bus": bus, "slot": slot, "function": function})
    return devices


def domain_context(vm: QubesVM, flavour: str = "xen") -> dict[str, Any]:
    """What the template needs, computed from ``vm``'s properties."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown domain XML flavour {flavour!r} (known: {FLAVOURS})")
    memory, maxmem = _memory(vm)
    return {
        "flavour": flavour,
        "domain_type": "xen" if flavour == "xen" else "test",
        "metadata_ns": METADATA_NS,
        "name": vm.name,
        "uuid": str(vm.uuid),
        "qid": vm.qid,
        "vm_class": type(vm).__name__,
        "virt_mode": vm.virt_mode,
        "memory": memory,
        "maxmem": maxmem,
        "vcpus": vm.vcpus,
        "os": _os(vm, flavour),
        "disks": _disks(vm),
        "interface": _interface(vm),
        # The test driver cannot pass host devices through.
        "pci_devices": _pci_devices(vm) if flavour == "xen" else [],
    }


def render_domain_xml(vm: QubesVM, flavour: str = "xen") -> str:
    """The libvirt domain XML of ``vm``."""
    return _environment().get_template(TEMPLATE).render(domain_context(vm, flavour))
