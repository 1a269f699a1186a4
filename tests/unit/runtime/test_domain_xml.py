"""Domain XML rendered from a VM's properties, read back with lxml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from qubes_core.backend.domain_xml import METADATA_NS, render_domain_xml
from qubes_core.devices import DeviceAssignment


def parse(vm: Any, flavour: str = "xen") -> etree._Element:
    return etree.fromstring(render_domain_xml(vm, flavour).encode())


def install_kernel(app: Any, version: str = "6.6.1-1") -> str:
    """A kernel in dom0's kernel pool (a VM may only name an installed one)."""
    kernel_dir = Path(app.pools["linux-kernel"].dir_path) / version
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "vmlinuz").write_bytes(b"")
    return version


def disks(root: etree._Element) -> dict[str, tuple[str, bool]]:
    """target dev -> (source dev, read-only)."""
    return {disk.find("target").get("dev"): (disk.find("source").get("dev"),
                                             disk.find("readonly") is not None)
            for disk in root.findall("devices/disk")}


def test_identity_memory_and_cpus(basic_app: Any) -> None:
    work = basic_app.domains["work"]
    work.memory = 600
    work.maxmem = 3000
    work.vcpus = 3
    root = parse(work)
    assert root.get("type") == "xen"
    assert root.findtext("name") == "work"
    assert root.findtext("uuid") == str(work.uuid)
    assert root.find("memory").get("unit") == "MiB"
    assert root.findtext("memory") == "3000"
    assert root.findtext("currentMemory") == "600"
    assert root.findtext("vcpu") == "3"
    meta = root.find(f"metadata/{{{METADATA_NS}}}vm")
    assert meta.get("class") == "AppVM"
    assert meta.get("qid") == str(work.qid)
    assert meta.get("virt_mode") == "pvh"


def test_maxmem_zero_or_pci_disables_balancing(basic_app: Any) -> None:
    work = basic_app.domains["work"]
    work.memory = 800
    work.maxmem = 0
    assert parse(work).findtext("memory") == "800"
    work.maxmem = 4000
    work.virt_mode = "hvm"
    work.devices["pci"].assign(DeviceAssignment("dom0", "00_1f.2"))
    root = parse(work)
    assert root.findtext("memory") == "800"
    address = root.find("devices/hostdev/source/address")
    assert (address.get("bus"), address.get("slot"), address.get("function")) == (
        "0x00", "0x1f", "0x2")


@pytest.mark.parametrize(("virt_mode", "os_type", "machine", "test_os_type"), [
    ("pvh", "xenpvh", "xenpvh", "xen"),
    ("pv", "linux", "xenpv", "xen"),
    ("hvm", "hvm", "xenfv", "hvm"),
])
def test_virt_mode_picks_the_os_type(basic_app: Any, virt_mode: str, os_type: str,
                                     machine: str, test_os_type: str) -> None:
    work = basic_app.domains["work"]
    work.virt_mode = virt_mode
    xen = parse(work, "xen")
    assert xen.find("os/type").text == os_type
    assert xen.find("os/type").get("machine") == machine
    assert (xen.find("features/acpi") is not None) == (virt_mode == "hvm")
    assert (xen.find("os/loader") is not None) == (virt_mode == "hvm")
    test = parse(work, "test")
    assert test.get("type") == "test"
    assert test.find("os/type").text == test_os_type
    assert test.find("os/type").get("machine") is None


def test_own_kernel_boots_through_pvgrub(basic_app: Any) -> None:
    work = basic_app.domains["work"]
    work.kernel = ""
    root = parse(work)
    assert root.findtext("os/kernel") == "/usr/lib/xen/boot/pvgrub2-pvh"
    assert root.find("os/cmdline") is None
    assert "xvdd" not in disks(root)


def test_dom0_kernel_and_escaped_kernelopts(basic_app: Any) -> None:
    work = basic_app.domains["work"]
    work.kernel = install_kernel(basic_app)
    work.kernelopts = "swiotlb=2048 x=<a&b>"
    root = parse(work)
    kernels = basic_app.base_dir / "vm-kernels" / "6.6.1-1"
    assert root.findtext("os/kernel") == str(kernels / "vmlinuz")
    assert root.findtext("os/initrd") == str(kernels / "initramfs")
    cmdline = root.findtext("os/cmdline")
    assert cmdline.startswith("root=/dev/mapper/dmroot ro")
    assert cmdline.endswith(" swiotlb=2048 x=<a&b>")
    assert disks(root)["xvdd"] == (str(kernels / "modules.img"), True)


def test_disks_follow_the_volume_config(basic_app: Any) -> None:
    work = basic_app.domains["work"]
    pool_dir = Path(basic_app.pools["varlibqubes"].config["dir_path"])
    found = disks(parse(work))
    assert found["xvda"] == (str(pool_dir / "appvms/work/root-dirty.img"), False)
    assert found["xvdb"] == (str(pool_dir / "appvms/work/private-dirty.img"), False)
    assert found["xvdc"] == (str(pool_dir / "appvms/work/volatile-dirty.img"), False)
    work.volume_config["private"]["rw"] = False
    assert disks(parse(work))["xvdb"][1] is True


def test_template_disks_live_under_vm_templates(basic_app: Any) -> None:
    template = basic_app.domains["debian-12"]
    pool_dir = Path(basic_app.pools["varlibqubes"].config["dir_path"])
    assert disks(parse(template))["xvda"][0] == str(
        pool_dir / "vm-templates/debian-12/root-dirty.img")


def test_network_from_the_netvm(basic_app: Any) -> None:
    work = basic_app.domains["work"]
    work.mac = "00:16:3e:5e:6c:42"
    interface = parse(work).find("devices/interface")
    assert interface.get("type") == "ethernet"
    assert interface.find("mac").get("address") == "00:16:3e:5e:6c:42"
    assert interface.find("ip").get("address") == work.ip
    assert interface.find("backenddomain").get("name") == "sys-firewall"
    work.netvm = basic_app.domains["sys-net"]
    assert parse(work).find("devices/interface/backenddomain").get("name") == "sys-net"
    work.netvm = None
    assert parse(work).find("devices/interface") is None


@pytest.mark.parametrize(("virt_mode", "os_type"), [("pvh", "xen"), ("hvm", "hvm")])
def test_test_driver_accepts_and_keeps_the_domain(basic_app: Any, runtime: Any,
                                                  virt_mode: str, os_type: str) -> None:
    """The test flavour goes through libvirt's real parser and comes back intact."""
    work = basic_app.domains["work"]
    work.virt_mode = virt_mode
    work.kernel = install_kernel(basic_app)
    work.memory = 500
    domain = runtime.connection().defineXML(render_domain_xml(work, "test"))
    back = etree.fromstring(domain.XMLDesc().encode())
    assert back.findtext("name") == "work"
    assert back.findtext("uuid") == str(work.uuid)
    assert back.findtext("currentMemory") == str(500 * 1024)  # libvirt stores KiB
    assert back.findtext("vcpu") == str(work.vcpus)
    assert back.find("os/type").text == os_type
    assert (back.find("features/acpi") is not None) == (virt_mode == "hvm")
    assert back.findtext("os/initrd").endswith("6.6.1-1/initramfs")
    assert set(disks(back)) == {"xvda", "xvdb", "xvdc", "xvdd"}
    assert back.find("devices/interface/backenddomain").get("name") == "sys-firewall"
    assert back.find(f"metadata/{{{METADATA_NS}}}vm").get("virt_mode") == virt_mode
