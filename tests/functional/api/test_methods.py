"""Methods through the whole call path (framing, checks, permission, handler, save)."""

from __future__ import annotations

import pytest

from qubes_core import exc
from qubes_core.app import Qubes


def on_disk(api) -> Qubes:
    """A second, read-only load of qubes.xml: what a restart would see."""
    return Qubes(api.app.store.path, lock=False)


async def test_vm_list_format(api):
    body = await api.call("admin.vm.List")
    lines = body.splitlines()
    assert [line.split()[0] for line in lines] == sorted(vm.name for vm in api.app.domains)
    work = api.app.domains["work"]
    assert f"work class=AppVM state=Halted uuid={work.uuid}" in lines
    assert body.endswith("\n")
    assert await api.call("admin.vm.List", "work") == (
        f"work class=AppVM state=Halted uuid={work.uuid}\n")


async def test_vmclass_list(api):
    assert (await api.call("admin.vmclass.List")).split() == [
        "AdminVM", "AppVM", "DispVM", "StandaloneVM", "TemplateVM"]


async def test_property_get_forms(api):
    assert await api.call("admin.vm.property.Get", "work", "netvm") == (
        "default=True type=vm sys-firewall")
    assert await api.call("admin.vm.property.Get", "work", "label") == (
        "default=False type=label blue")
    assert await api.call("admin.vm.property.Get", "work", "memory") == (
        "default=True type=int 400")
    assert await api.call("admin.vm.property.Get", "sys-net", "netvm") == (
        "default=False type=vm ")
    assert await api.call("admin.vm.property.Get", "work", "provides_network") == (
        "default=True type=bool False")
    assert await api.call("admin.vm.property.Get", "work", "start_time") == (
        "default=True type=str ")
    assert await api.call("admin.property.Get", "dom0", "default_netvm") == (
        "default=False type=vm sys-firewall")


async def test_property_get_all_matches_get(api):
    lines = (await api.call("admin.vm.property.GetAll", "work")).splitlines()
    names = [line.split(" ", 1)[0] for line in lines]
    assert names == sorted(names)
    assert names == (await api.call("admin.vm.property.List", "work")).split()
    for line in lines:
        name, rest = line.split(" ", 1)
        assert rest == await api.call("admin.vm.property.Get", "work", name)


async def test_get_all_escapes(api):
    work = api.app.domains["work"]
    work._property_values["kernelopts"] = "a\\b\nc"  # as an old qubes.xml may hold
    line = [line for line in (await api.call("admin.vm.property.GetAll", "work")).splitlines()
            if line.startswith("kernelopts ")]
    assert line == ["kernelopts default=False type=str a\\\\b\\nc"]


async def test_property_set_is_on_disk_at_reply(api):
    assert await api.call("admin.vm.property.Set", "work", "memory", "1234") == ""
    assert api.app.domains["work"].memory == 1234
    reloaded = on_disk(api)
    assert reloaded.domains["work"].memory == 1234
    reloaded.close()


async def test_property_set_vm_and_none(api):
    await api.call("admin.vm.property.Set", "work", "netvm", "sys-net")
    assert api.app.domains["work"].netvm is api.app.domains["sys-net"]
    await api.call("admin.vm.property.Set", "work", "netvm", "")
    assert api.app.domains["work"].netvm is None
    await api.call("admin.vm.property.Reset", "work", "netvm")
    assert await api.call("admin.vm.property.Get", "work", "netvm") == (
        "default=True type=vm sys-firewall")


@pytest.mark.parametrize("prop, value, error", [
    ("memory", "lots", exc.QubesPropertyValueError),
    ("memory", "-5", exc.QubesPropertyValueError),
    ("provides_network", "maybe", exc.QubesPropertyValueError),
    ("netvm", "no-such-vm", exc.QubesPropertyValueError),
    ("netvm", "work", exc.QubesValueError),  # as Qubes: not a QubesPropertyValueError
    ("label", "ultraviolet", exc.QubesPropertyValueError),
    ("name", "other", exc.QubesPropertyValueError),
    ("start_time", "5", exc.QubesPropertyValueError),
    ("kernelopts", "a\x00b", exc.QubesValueError),
    ("kernelopts", "a\nb", exc.QubesValueError),
    ("nosuchprop", "1", exc.QubesNoSuchPropertyError),
])
async def test_property_set_refused_changes_nothing(api, prop, value, error):
    before = api.app.store.path.read_bytes()
    with pytest.raises(error):
        await api.call("admin.vm.property.Set", "work", prop, value.encode())
    assert api.app.store.path.read_bytes() == before


async def test_property_set_invalid_utf8(api):
    with pytest.raises(exc.QubesValueError, match="UTF-8"):
        await api.call("admin.vm.property.Set", "work", "kernelopts", b"\xff\xfe")


async def test_property_help_default_and_reset(api):
    assert "Memory" in await api.call("admin.vm.property.Help", "work", "memory")
    assert await api.call("admin.vm.property.GetDefault", "work", "memory") == "type=int 400"
    await api.call("admin.vm.property.Set", "work", "memory", "500")
    assert await api.call("admin.vm.property.Get", "work", "memory") == (
        "default=False type=int 500")
    await api.call("admin.vm.property.Reset", "work", "memory")
    assert await api.call("admin.vm.property.Get", "work", "memory") == (
        "default=True type=int 400")
    with pytest.raises(exc.QubesValueError, match="no default"):
        await api.call("admin.vm.property.Reset", "work", "label")


async def test_global_properties(api):
    names = (await api.call("admin.property.List")).split()
    assert "default_netvm" in names and "clockvm" in names
    await api.call("admin.property.Set", "dom0", "clockvm", "sys-net")
    assert api.app.clockvm is api.app.domains["sys-net"]
    assert api.app.domains["sys-net"].features["service.clocksync"] == "1"
    with pytest.raises(exc.ProtocolError, match="must be dom0"):
        await api.call("admin.property.Get", "work", "clockvm")


async def test_request_shape_is_enforced(api):
    with pytest.raises(exc.ProtocolError, match="no such method: 'admin.vm.Nope'"):
        await api.call("admin.vm.Nope", "work")
    with pytest.raises(exc.ProtocolError, match="takes no argument"):
        await api.call("admin.vm.List", "dom0", "x")
    with pytest.raises(exc.ProtocolError, match="needs an argument"):
        await api.call("admin.vm.property.Get", "work")
    with pytest.raises(exc.ProtocolError, match="takes no payload"):
        await api.call("admin.vm.property.Get", "work", "netvm", b"x")
    with pytest.raises(exc.QubesVMNotFoundError):
        await api.call("admin.vm.property.Get", "ghost", "netvm")
    # A method is only served on its own socket.
    with pytest.raises(exc.ProtocolError, match="no such method"):
        await api.call("qubes.GetDate", "dom0", kind="admin")
    with pytest.raises(exc.ProtocolError, match="no such method"):
        await api.call("admin.vm.List", "dom0", kind="misc")


async def test_features(api):
    await api.call("admin.vm.feature.Set", "work", "gui", "1")
    await api.call("admin.vm.feature.Set", "debian-12", "os-distribution", "debian")
    assert await api.call("admin.vm.feature.Get", "work", "gui") == "1"
    assert await api.call("admin.vm.feature.List", "work") == "gui\n"
    assert await api.call("admin.vm.feature.CheckWithTemplate", "work",
                          "os-distribution") == "debian"
    await api.call("admin.vm.feature.Set", "sys-firewall", "net-only", "yes")
    assert await api.call("admin.vm.feature.CheckWithNetvm", "work", "net-only") == "yes"
    await api.call("admin.vm.feature.Remove", "work", "gui")
    with pytest.raises(exc.QubesFeatureNotFoundError):
        await api.call("admin.vm.feature.Get", "work", "gui")
    with pytest.raises(exc.QubesFeatureNotFoundError):
        await api.call("admin.vm.feature.Remove", "work", "gui")
    with pytest.raises(exc.QubesValueError, match="invalid feature name"):
        await api.call("admin.vm.feature.Set", "work", "bad/name", "1")
    reloaded = on_disk(api)
    assert "gui" not in reloaded.domains["work"].features
    assert reloaded.domains["sys-firewall"].features["net-only"] == "yes"
    reloaded.close()


async def test_tags(api):
    await api.call("admin.vm.tag.Set", "work", "audio")
    assert await api.call("admin.vm.tag.Get", "work", "audio") == "1"
    assert await api.call("admin.vm.tag.Get", "work", "video") == "0"
    assert await api.call("admin.vm.tag.List", "work") == "audio\naudiovm-dom0\nguivm-dom0\n"
    await api.call("admin.vm.tag.Remove", "work", "audio")
    with pytest.raises(exc.QubesTagNotFoundError):
        await api.call("admin.vm.tag.Remove", "work", "audio")
    with pytest.raises(exc.QubesValueError):
        await api.call("admin.vm.tag.Set", "work", "bad.tag!")


async def test_labels(api):
    assert (await api.call("admin.label.List")).split()[:2] == ["red", "orange"]
    assert await api.call("admin.label.Get", "dom0", "red") == "0xcc0000"
    assert await api.call("admin.label.Index", "dom0", "black") == "8"
    await api.call("admin.label.Create", "dom0", "pink", "0xff00ff")
    assert await api.call("admin.label.Index", "dom0", "pink") == "9"
    with pytest.raises(exc.QubesValueError, match="colour"):
        await api.call("admin.label.Create", "dom0", "teal", "green")
    await api.call("admin.vm.property.Set", "work", "label", "pink")
    with pytest.raises(exc.QubesValueError, match="used by: work"):
        await api.call("admin.label.Remove", "dom0", "pink")
    await api.call("admin.vm.property.Set", "work", "label", "red")
    await api.call("admin.label.Remove", "dom0", "pink")
    with pytest.raises(exc.QubesLabelNotFoundError):
        await api.call("admin.label.Get", "dom0", "pink")


async def test_create_and_remove(api):
    await api.call("admin.vm.Create.AppVM", "dom0", "", "name=new1 label=red")
    new = api.app.domains["new1"]
    assert new.template is api.app.domains["debian-12"]
    await api.call("admin.vm.Create.AppVM", "dom0", "debian-12", "name=new2 label=green")
    await api.call("admin.vm.Create.StandaloneVM", "dom0", "", "name=solo label=gray")
    assert api.app.domains["solo"].klass == "StandaloneVM"
    images = api.app.base_dir / "appvms" / "solo"
    assert sorted(p.name for p in images.iterdir()) == ["private.img", "root.img"]
    reloaded = on_disk(api)
    assert {"new1", "new2", "solo"} <= set(reloaded.domains.keys())
    reloaded.close()
    await api.call("admin.vm.Remove", "solo")
    assert not images.exists()
    await api.call("admin.vm.Remove", "new1")
    assert "new1" not in api.app.domains
    reloaded = on_disk(api)
    assert "new1" not in reloaded.domains
    reloaded.close()


@pytest.mark.parametrize("method, arg, payload, error", [
    ("admin.vm.Create.AppVM", "", "name=work label=red", exc.QubesVMAlreadyExistsError),
    ("admin.vm.Create.AppVM", "", "name=x label=nolabel", exc.QubesLabelNotFoundError),
    ("admin.vm.Create.AppVM", "", "name=1bad label=red", exc.QubesValueError),
    ("admin.vm.Create.AppVM", "", "label=red", exc.QubesValueError),
    ("admin.vm.Create.AppVM", "", "name=x label=red extra=1", exc.QubesValueError),
    ("admin.vm.Create.AppVM", "", "name=x label=red pool=varlibqubes", exc.QubesValueError),
    ("admin.vm.Create.AppVM", "sys-net", "name=x label=red", exc.QubesPropertyValueError),
    ("admin.vm.Create.AppVM", "ghost", "name=x label=red", exc.QubesPropertyValueError),
    ("admin.vm.Create.DispVM", "", "name=x label=red", exc.QubesValueError),
    ("admin.vm.Create.StandaloneVM", "debian-12", "name=x label=red", exc.QubesValueError),
    ("admin.vm.CreateInPool.AppVM", "", "name=x label=red pool=nopool", exc.QubesValueError),
    ("admin.vm.CreateInPool.AppVM", "", "name=x label=red pool:nosuch=varlibqubes",
     exc.QubesValueError),
])
async def test_create_refused_leaves_nothing(api, method, arg, payload, error):
    before = api.app.store.path.read_bytes()
    names = set(api.app.domains.keys())
    with pytest.raises(error):
        await api.call(method, "dom0", arg, payload)
    assert set(api.app.domains.keys()) == names
    assert api.app.store.path.read_bytes() == before


async def test_create_in_pool(api):
    await api.call("admin.vm.CreateInPool.StandaloneVM", "dom0", "",
                   "name=pooled label=red pool:private=varlibqubes")
    assert api.app.domains["pooled"].volume_config["private"]["pool"] == "varlibqubes"


async def test_create_disposable(api):
    work = api.app.domains["work"]
    with pytest.raises(exc.QubesValueError, match="not a template for DispVMs"):
        await api.call("admin.vm.CreateDisposable", "work")
    await api.call("admin.vm.property.Set", "work", "template_for_dispvms", "True")
    work.features["x-marker"] = "1"
    name = await api.call("admin.vm.CreateDisposable", "work")
    disp = api.app.domains[name]
    assert name.startswith("disp") and disp.klass == "DispVM"
    assert disp.auto_cleanup and disp.template is work
    assert disp.features["x-marker"] == "1"
    reloaded = on_disk(api)
    assert name in reloaded.domains
    reloaded.close()


async def test_remove_refuses_dom0_and_used_vms(api):
    with pytest.raises(exc.QubesVMError):
        await api.call("admin.vm.Remove", "dom0")
    with pytest.raises(exc.QubesVMInUseError):
        await api.call("admin.vm.Remove", "sys-firewall")
    assert "sys-firewall" in api.app.domains


async def test_lifecycle_without_runtime(api):
    with pytest.raises(exc.QubesVMError, match="runtime"):
        await api.call("admin.vm.Start", "work")
    with pytest.raises(exc.QubesValueError, match="shutdown option"):
        await api.call("admin.vm.Shutdown", "work", "gently")
    assert await api.call("admin.vm.CurrentState", "work") == (
        "mem=0 mem_static_max=0 cputime=0 power_state=Halted")
    assert "power_state=Running" in await api.call("admin.vm.CurrentState", "dom0")


PCI_ASSIGNMENT = ("device_id='*' port_id='00_19.0' devclass='pci' backend_domain='dom0' "
                  "mode='required' _no-strict-reset='True'")


async def test_pci_assignments(api):
    """The 4.4 wire form: the serialized assignment as payload and in each line."""
    await api.call("admin.vm.device.pci.Assign", "sys-net", "dom0+00_19.0", PCI_ASSIGNMENT)
    assert await api.call("admin.vm.device.pci.Assigned", "sys-net") == (
        "dom0+00_19.0:* device_id='*' port_id='00_19.0' devclass='pci' "
        "backend_domain='dom0' mode='required' frontend_domain='sys-net' "
        "_no-strict-reset='True'\n")
    assert api.app.domains["sys-net"].virt_mode == "hvm"
    with pytest.raises(exc.DeviceAlreadyAssigned):
        await api.call("admin.vm.device.pci.Assign", "sys-net", "dom0+00_19.0",
                       PCI_ASSIGNMENT)
    with pytest.raises(exc.QubesValueError, match="BB_DD.F"):
        await api.call("admin.vm.device.pci.Assign", "work", "dom0+zz",
                       PCI_ASSIGNMENT.replace("00_19.0", "zz"))
    with pytest.raises(exc.QubesValueError, match="BACKEND"):
        await api.call("admin.vm.device.pci.Assign", "work", "00_19.0", PCI_ASSIGNMENT)
    with pytest.raises(exc.UnexpectedDeviceProperty):  # the payload names another device
        await api.call("admin.vm.device.pci.Assign", "work", "dom0+00_1f.2", PCI_ASSIGNMENT)
    with pytest.raises(exc.ProtocolError):
        await api.call("admin.vm.device.pci.Assign", "work", "dom0+00_19.0",
                       "no-strict-reset=True")
    reloaded = on_disk(api)
    assigned = reloaded.domains["sys-net"].devices["pci"].assignments()
    assert [(a.ident, a.mode, a.options) for a in assigned] == [
        ("00_19.0", "required", {"no-strict-reset": "True"})]
    reloaded.close()
    await api.call("admin.vm.device.pci.Unassign", "sys-net", "dom0+00_19.0")
    assert await api.call("admin.vm.device.pci.Assigned", "sys-net") == ""
    with pytest.raises(exc.DeviceNotAssigned):
        await api.call("admin.vm.device.pci.Unassign", "sys-net", "dom0+00_19.0")


async def test_pci_available_reads_sysfs(api, tmp_path, monkeypatch):
    from qubes_core.api import devices

    root = tmp_path / "sysfs"
    for name, vendor, device, klass in [("0000:00:1f.2", "0x8086", "0xa102", "0x010601"),
                                        ("0000:03:00.0", "0x10ec", "0x8168", "0x020000"),
                                        ("0001:00:00.0", "0x1", "0x2", "0x3")]:
        (root / name).mkdir(parents=True)
        (root / name / "vendor").write_text(vendor + "\n")
        (root / name / "device").write_text(device + "\n")
        (root / name / "class").write_text(klass + "\n")
    monkeypatch.setattr(devices, "SYSFS_PCI", root)
    nic = ("03_00.0:0x10ec:0x8168::p020000 device_id='0x10ec:0x8168::p020000' "
           "port_id='03_00.0' devclass='pci' backend_domain='dom0' vendor='0x10ec' "
           "product='0x8168' interfaces='p020000'\n")
    body = await api.call("admin.vm.device.pci.Available", "dom0")
    assert body.startswith("00_1f.2:0x8086:0xa102::p010601 ") and body.endswith(nic)
    assert len(body.splitlines()) == 2
    assert await api.call("admin.vm.device.pci.Available", "dom0", "03_00.0") == nic
    assert await api.call("admin.vm.device.pci.Available", "work") == ""


async def test_pci_available_on_this_machine(api):
    from pathlib import Path

    from qubes_core.api.devices import host_pci_devices

    body = await api.call("admin.vm.device.pci.Available", "dom0")
    here = sorted(p.name for p in Path("/sys/bus/pci/devices").glob("0000:*"))
    assert len(body.splitlines()) == len(here) == len(host_pci_devices())


async def test_system_info(api):
    import json

    info = json.loads(await api.call("internal.GetSystemInfo", kind="internal"))
    assert info["domains"]["work"]["type"] == "AppVM"
    assert info["domains"]["work"]["template"] == "debian-12"
    assert info["domains"]["dom0"]["power_state"] == "Running"
