"""The property set of Qubes R4.4, per VM class and global, with its rules."""

from __future__ import annotations

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.vm import get_vm_class

# What Qubes R4.4 lists for each class (admin.vm.property.List, admin.property.List).
QUBESVM = {
    "audiovm", "autostart", "backup_timestamp", "bootmode", "debug", "default_dispvm",
    "default_user", "devices_denied", "dns", "gateway", "gateway6", "guivm", "icon",
    "include_in_backups", "installed_by_rpm", "ip", "ip6", "kernel", "kernelopts",
    "keyboard_layout", "klass", "label", "mac", "management_dispvm", "maxmem", "memory",
    "name", "netvm", "provides_network", "qid", "qrexec_timeout", "shutdown_timeout",
    "start_time", "stubdom_mem", "stubdom_uuid", "stubdom_xid", "updateable", "uuid",
    "vcpus", "virt_mode", "visible_gateway", "visible_gateway6", "visible_ip",
    "visible_ip6", "visible_netmask", "xid",
}
EXPECTED = {
    "AppVM": QUBESVM | {"template", "template_for_dispvms"},
    "StandaloneVM": QUBESVM | {"template_for_dispvms"},
    "TemplateVM": QUBESVM | {"appvm_default_bootmode"},
    "DispVM": QUBESVM | {"template", "dispid", "auto_cleanup", "is_preload"},
    "AdminVM": {"default_dispvm", "devices_denied", "icon", "include_in_backups",
                "keyboard_layout", "klass", "label", "maxmem", "name", "qid", "updateable",
                "uuid"},
}
GLOBAL = {
    "check_updates_vm", "clockvm", "default_audiovm", "default_dispvm", "default_guivm",
    "default_kernel", "default_netvm", "default_pool", "default_pool_kernel",
    "default_pool_private", "default_pool_root", "default_pool_volatile",
    "default_qrexec_timeout", "default_shutdown_timeout", "default_template", "management_dispvm",
    "maxmem", "no_cpus", "stats_interval", "updatevm",
}


@pytest.mark.parametrize("klass", sorted(EXPECTED))
def test_each_class_has_the_properties_of_qubes(klass):
    names = {p.__name__ for p in get_vm_class(klass).property_list()}
    assert names == EXPECTED[klass]
    assert len(EXPECTED["AppVM"]) == 48


def test_global_properties_are_those_of_qubes():
    assert {p.__name__ for p in Qubes.property_list()} == GLOBAL


def test_values_from_the_runtime_and_computed(basic_app):
    net, work = basic_app.domains["sys-net"], basic_app.domains["work"]
    firewall = basic_app.domains["sys-firewall"]
    assert work.xid == -1 and work.stubdom_xid == -1 and work.stubdom_uuid == ""
    assert work.klass == "AppVM" and work.icon == "appvm-blue"
    assert basic_app.domains["debian-12"].icon == "templatevm-black"
    assert basic_app.domains[0].icon == "adminvm-black"
    # sys-net has no netvm but provides network: it has an address
    assert net.netvm is None and net.ip == f"10.137.0.{net.qid}"
    assert net.gateway == net.ip and net.dns == ("10.139.1.1", "10.139.1.2")
    assert work.visible_gateway == firewall.ip and work.visible_netmask == "255.255.255.255"
    assert work.gateway is None and work.ip6 is None
    basic_app.domains["debian-12"].netvm = None
    assert basic_app.domains["debian-12"].ip is None
    work.features["net.fake-ip"] = "192.168.1.128"
    assert work.visible_ip == "192.168.1.128" and work.ip != work.visible_ip
    assert work.updateable is False and basic_app.domains["debian-12"].updateable is True
    for name in ("xid", "klass", "updateable", "dns", "gateway"):
        with pytest.raises(exc.QubesPropertyValueError, match="read-only"):
            setattr(work, name, 1)


def test_addresses_from_vm_numbers_skip_0_and_255(app):
    for qid in (254, 255, 300):
        template = app.add_new_vm("TemplateVM", qid=qid, name=f"t{qid}", label="black",
                                  provides_network=True)
        assert not template.ip.endswith((".0", ".255"))
    assert app.domains["t254"].ip == "10.137.0.254"
    assert app.domains["t255"].ip == "10.137.1.1"


def test_guivm_and_audiovm_tags_follow_the_vms(basic_app):
    work = basic_app.domains["work"]
    assert {"guivm-dom0", "audiovm-dom0"} <= set(work.tags)
    gui = basic_app.add_new_vm("AppVM", name="sys-gui", label="red")
    work.guivm = gui
    assert "guivm-sys-gui" in work.tags and "guivm-dom0" not in work.tags
    del work.guivm
    assert "guivm-dom0" in work.tags and "guivm-sys-gui" not in work.tags
    basic_app.default_audiovm = None
    assert not [t for t in work.tags if t.startswith("audiovm-")]
    basic_app.default_audiovm = gui
    assert "audiovm-sys-gui" in work.tags


def test_keyboard_layout_follows_the_guivm_and_is_checked(basic_app):
    work = basic_app.domains["work"]
    assert work.keyboard_layout == "us++"
    basic_app.domains[0].keyboard_layout = "de+nodeadkeys+grp:alt_shift_toggle"
    assert work.keyboard_layout == "de+nodeadkeys+grp:alt_shift_toggle"
    assert work.property_is_default("keyboard_layout")
    for bad in ("us", "us+;rm -rf+", "ü++"):
        with pytest.raises(exc.QubesPropertyValueError):
            work.keyboard_layout = bad


def test_keyboard_layout_default_survives_a_guivm_loop(basic_app):
    """A VM that is its own guivm (here through default_guivm), or two VMs that are
    each other's, still has a default layout: the nearest one set, else us++."""
    net, firewall = basic_app.domains["sys-net"], basic_app.domains["sys-firewall"]
    basic_app.default_guivm = net
    assert net.guivm is net
    assert net.keyboard_layout == "us++"
    net.guivm = firewall
    firewall.guivm = net
    assert net.keyboard_layout == "us++"
    firewall.keyboard_layout = "fr++"
    assert net.keyboard_layout == "fr++"
    assert basic_app.domains["work"].keyboard_layout == "fr++"


def test_devices_denied_is_kept_canonical(basic_app):
    work = basic_app.domains["work"]
    work.devices_denied = "u03****p0e****u03****"
    assert work.devices_denied == "p0e****u03****"
    for bad in ("x03****", "u03***", "u0G****"):
        with pytest.raises(exc.QubesValueError):
            work.devices_denied = bad
    assert work.devices_denied == "p0e****u03****"


@pytest.mark.parametrize(("name", "value"), [
    ("default_pool", ""), ("default_pool", "nowhere"), ("default_pool_kernel", "nowhere"),
    ("default_pool_root", ""), ("default_qrexec_timeout", "-5"),
    ("default_qrexec_timeout", "0"), ("default_shutdown_timeout", "-1"),
    ("stats_interval", "0"), ("default_kernel", "]]>"), ("default_kernel", "../../etc"),
    ("default_kernel", "6.1.0-not-installed"), ("default_template", "sys-net"),
    ("default_netvm", "work"), ("default_dispvm", "work"), ("clockvm", "nosuchvm"),
    ("check_updates_vm", "maybe"), ("maxmem", "1"), ("no_cpus", "4"),
    ("default_qrexec_timeout", "١٢"), ("stats_interval", "1" * 20),
])
def test_global_properties_validated_like_their_vm_counterparts(basic_app, name, value):
    before = basic_app.property_get_text(name)
    with pytest.raises(exc.QubesValueError):
        setattr(basic_app, name, value)
    assert basic_app.property_get_text(name) == before


def test_global_references_that_exist_are_taken(basic_app, tmp_path):
    kernels = tmp_path / "vm-kernels" / "6.1.0-1"
    kernels.mkdir(parents=True)
    (kernels / "vmlinuz").write_bytes(b"")
    basic_app.default_kernel = "6.1.0-1"
    basic_app.default_pool_kernel = "linux-kernel"
    basic_app.default_qrexec_timeout = "30"
    assert basic_app.domains["work"].qrexec_timeout == 30
    assert basic_app.domains["work"].kernel == "6.1.0-1"


@pytest.mark.parametrize(("name", "value"), [
    ("memory", "1" * 20), ("memory", "٤٠٠"), ("memory", "0"), ("vcpus", "²"),
    ("mac", "ff:ff:ff:ff:ff:ff"), ("mac", "01:00:5e:00:00:01"), ("ip", "10.0.0.256"),
    ("kernelopts", "x" * 513), ("default_user", "user:root"), ("stubdom_mem", "-1"),
    ("bootmode", "a b"), ("qrexec_timeout", "-1"), ("shutdown_timeout", "0"),
])
def test_vm_properties_refuse_edge_values(basic_app, name, value):
    work = basic_app.domains["work"]
    before = work.property_get_text(name)
    with pytest.raises(exc.QubesValueError):
        setattr(work, name, value)
    assert work.property_get_text(name) == before


def test_memory_never_above_a_set_maxmem(basic_app):
    work = basic_app.domains["work"]
    work.maxmem = 2000
    with pytest.raises(exc.QubesPropertyValueError, match="maxmem"):
        work.memory = 3000
    work.memory = 1500
    with pytest.raises(exc.QubesPropertyValueError, match="memory"):
        work.maxmem = 1000
    work.maxmem = 0  # balancing off: any memory
    work.memory = 3000
    del work.maxmem
    assert work.maxmem >= work.memory  # a default never contradicts memory


def test_default_netvm_refuses_a_loop_through_vms_on_the_default(basic_app):
    lone = basic_app.add_new_vm("AppVM", name="sys-vpn", label="red", provides_network=True)
    assert lone.netvm is basic_app.domains["sys-firewall"]  # follows the default
    with pytest.raises(exc.QubesPropertyValueError, match="loop"):
        basic_app.default_netvm = lone
    assert basic_app.default_netvm is basic_app.domains["sys-firewall"]
    basic_app.default_netvm = basic_app.domains["sys-net"]  # sys-net's netvm is set


def test_new_volumes_take_their_pools_revisions_to_keep(app):
    app.pools["varlibqubes"].revisions_to_keep = 3
    template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
    assert template.volume_config["private"]["revisions_to_keep"] == 3
    assert template.volume_config["root"]["revisions_to_keep"] == 3


def test_clone_that_fails_part_way_leaves_nothing(basic_app):
    work = basic_app.domains["work"]
    work.features["service.cups"] = "1"
    work.features.load("service." + "x" * 60, "1")  # loads, but is no service name
    with pytest.raises(exc.QubesValueError, match="service name"):
        basic_app.clone_vm(work, "work-copy")
    assert "work-copy" not in basic_app.domains
    del work.features["service." + "x" * 60]
    copy = basic_app.clone_vm(work, "work-copy")
    assert copy.features["service.cups"] == "1"
