"""Every method of the registry answers in the form Qubes R4.4's client parses.

One contract per method: it makes a valid call against a served model (the
libvirt test driver runs the VMs, volumes live in a real file-reflink pool) and
checks the reply the way the Qubes 4.4 client (``qubesadmin``) reads it: property
lines, device lines, volume and pool info keys, list forms. The checks here are
written from the client's parsing rules, not with the client, so that the suite
does not depend on it. A method without a contract fails the coverage test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from qubes_core import exc, protocol
from qubes_core.api import registry
from qubes_core.devices import DEVICE_CLASSES, DeviceAssignment
from tests.unit.runtime.support import lifecycle_app, runtime  # noqa: F401

from .conftest import Harness

Contract = Callable[[Harness, str], Awaitable[None]]
CONTRACTS: dict[str, Contract] = {}
PROPERTY_TYPES = ("str", "int", "bool", "vm", "label")
ASSIGNMENT_MODES = ("required", "auto-attach", "ask-to-attach", "manual")


def contract(*names: str) -> Callable[[Contract], Contract]:
    def decorator(func: Contract) -> Contract:
        for name in names:
            assert name not in CONTRACTS, name
            CONTRACTS[name] = func
        return func
    return decorator


def per_device_class(action: str) -> list[str]:
    return [f"admin.vm.device.{devclass}.{action}" for devclass in DEVICE_CLASSES]


@pytest.fixture
async def api(lifecycle_app: Any, tmp_path: Any) -> Harness:  # noqa: F811
    app = lifecycle_app
    dvm = app.add_new_vm("AppVM", name="work-dvm", label="red", template_for_dispvms=True)
    await dvm.storage.create()
    app.default_dispvm = dvm
    app.domains["sys-net"].devices["pci"].assign(DeviceAssignment(
        "dom0", "00_1f.6", {"no-strict-reset": "True"}, "pci", "required", "*"))
    app.domains["work"].devices["block"].assign(DeviceAssignment(
        "sys-net", "xvdi", {"frontend-dev": "xvdj"}, "block", "auto-attach", "QEMU_DISK"))
    app.domains["work"].devices_denied = "u03****p0e****"
    return Harness(app, tmp_path)


async def open_stream(api: Harness, name: str) -> tuple[Any, Any]:
    """A connection to the started server's admin socket that asked dom0 for ``name``."""
    import asyncio

    reader, writer = await asyncio.open_unix_connection(str(api.server.paths.admin_socket))
    writer.write(protocol.encode_request(name, "dom0", "dom0"))
    writer.write_eof()
    return reader, writer


# --- the client's parsing rules --------------------------------------------------

def typed_value(prop_type: str, value: str) -> Any:
    """As ``qubesadmin.base._parse_type_value``: refuses what the client refuses."""
    assert prop_type in PROPERTY_TYPES, prop_type
    if prop_type == "bool":
        assert value in ("", "True", "False"), value
    if prop_type == "int" and value != "":
        int(value)
    return value


def property_reply(text: str) -> tuple[bool, str, str]:
    """``default=True|False type=T VALUE``."""
    default, prop_type, value = text.split(" ", 2)
    assert default in ("default=True", "default=False"), text
    assert prop_type.startswith("type="), text
    typed_value(prop_type[5:], value)
    return default == "default=True", prop_type[5:], value


def unescape(line: str) -> str:
    out, chars = [], iter(line)
    for char in chars:
        if char == "\\":
            nxt = next(chars)
            out.append({"n": "\n", "\\": "\\"}[nxt])
        else:
            out.append(char)
    return "".join(out)


def key_values(text: str) -> dict[str, str]:
    """``key=value`` lines (volume and pool info, CurrentState)."""
    return dict(line.split("=", 1) for line in text.splitlines())


def names(text: str) -> list[str]:
    lines = text.splitlines()
    assert text == "" or text.endswith("\n"), text
    assert all(re.match(r"^[A-Za-z0-9_.:+-]+$", line) for line in lines), lines
    return lines


def device_props(text: str) -> dict[str, str]:
    """``key='value' ...`` as the client's DeviceSerializer unpacks it."""
    found = dict(re.findall(r"(\S+?)='((?:[^'\\]|\\.)*)'", text))
    rebuilt = " ".join(f"{k}='{v}'" for k, v in found.items())
    assert rebuilt == text.strip(), (rebuilt, text)
    return found


def assignment_lines(text: str, devclass: str, frontend: str) -> list[dict[str, str]]:
    found = []
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        backend, _, port_and_id = head.partition("+")
        port, _, device_id = port_and_id.partition(":")
        props = device_props(rest)
        assert props["backend_domain"] == backend and props["port_id"] == port
        assert props["devclass"] == devclass and props["device_id"] == device_id
        assert props["mode"] in ASSIGNMENT_MODES
        assert props.get("frontend_domain", frontend) == frontend
        found.append(props)
    return found


def assignment_payload(backend: str, port: str, devclass: str, mode: str = "required",
                       device_id: str = "*", **options: str) -> str:
    fields = [f"device_id='{device_id}'", f"port_id='{port}'", f"devclass='{devclass}'",
              f"backend_domain='{backend}'", f"mode='{mode}'"]
    return " ".join(fields + [f"_{k}='{v}'" for k, v in options.items()])


# --- VMs and properties -----------------------------------------------------------

@contract("admin.vm.List")
async def _vm_list(api: Harness, name: str) -> None:
    for line in (await api.call(name)).splitlines():
        vm_name, rest = line.split(" ", 1)
        props = dict(item.split("=", 1) for item in rest.split(" "))
        assert props["class"] in ("AdminVM", "AppVM", "TemplateVM", "StandaloneVM", "DispVM")
        assert props["state"] in ("Halted", "Running", "Paused", "Transient", "Halting",
                                  "Dying", "Crashed", "Suspended")
    assert "sys-net" in (await api.call(name, "sys-net"))


@contract("admin.vmclass.List")
async def _vmclass_list(api: Harness, name: str) -> None:
    assert {"AppVM", "TemplateVM", "StandaloneVM", "DispVM"} <= set(names(
        await api.call(name)))


@contract("admin.vm.property.List", "admin.property.List")
async def _property_list(api: Harness, name: str) -> None:
    dest = "work" if ".vm." in name else "dom0"
    listed = names(await api.call(name, dest))
    assert listed == sorted(listed) and "label" in listed or "default_netvm" in listed


@contract("admin.vm.property.Get", "admin.property.Get")
async def _property_get(api: Harness, name: str) -> None:
    dest = "work" if ".vm." in name else "dom0"
    listed = (await api.call(name.replace("Get", "List"), dest)).split()
    for prop in listed:
        property_reply(await api.call(name, dest, prop))
    if ".vm." in name:
        assert property_reply(await api.call(name, "sys-net", "ip"))[2] != ""
        assert property_reply(await api.call(name, "work", "xid"))[1:] == ("int", "-1")
        assert property_reply(await api.call(name, "work", "netvm")) == (
            True, "vm", "sys-firewall")


@contract("admin.vm.property.GetAll", "admin.property.GetAll")
async def _property_get_all(api: Harness, name: str) -> None:
    dest = "work" if ".vm." in name else "dom0"
    listed = (await api.call(name.replace("GetAll", "List"), dest)).split()
    seen = []
    for line in (await api.call(name, dest)).splitlines():
        prop, rest = unescape(line).split(" ", 1)
        property_reply(rest)
        seen.append(prop)
    assert seen == listed


@contract("admin.vm.property.GetDefault", "admin.property.GetDefault")
async def _property_get_default(api: Harness, name: str) -> None:
    dest, prop = ("work", "vcpus") if ".vm." in name else ("dom0", "default_qrexec_timeout")
    prop_type, value = (await api.call(name, dest, prop)).split(" ", 1)
    assert prop_type == "type=int" and int(value) > 0


@contract("admin.vm.property.Help", "admin.property.Help")
async def _property_help(api: Harness, name: str) -> None:
    dest, prop = ("work", "netvm") if ".vm." in name else ("dom0", "default_netvm")
    assert await api.call(name, dest, prop)


@contract("admin.vm.property.Set", "admin.property.Set")
async def _property_set(api: Harness, name: str) -> None:
    dest, prop = ("work", "vcpus") if ".vm." in name else ("dom0", "default_qrexec_timeout")
    assert await api.call(name, dest, prop, "3") == ""
    assert property_reply(await api.call(name.replace("Set", "Get"), dest, prop)) == (
        False, "int", "3")


@contract("admin.vm.property.Reset", "admin.property.Reset")
async def _property_reset(api: Harness, name: str) -> None:
    dest, prop = ("work", "vcpus") if ".vm." in name else ("dom0", "default_qrexec_timeout")
    await api.call(name.replace("Reset", "Set"), dest, prop, "3")
    assert await api.call(name, dest, prop) == ""
    assert property_reply(await api.call(name.replace("Reset", "Get"), dest, prop))[0]


# --- features, tags, labels, notes --------------------------------------------------

@contract("admin.vm.feature.List", "admin.vm.tag.List")
async def _feature_tag_list(api: Harness, name: str) -> None:
    listed = names(await api.call(name, "work"))
    if "tag" in name:
        assert "guivm-dom0" in listed and "audiovm-dom0" in listed


@contract("admin.vm.feature.Get", "admin.vm.feature.CheckWithTemplate",
          "admin.vm.feature.CheckWithNetvm", "admin.vm.feature.CheckWithAdminVM",
          "admin.vm.feature.CheckWithTemplateAndAdminVM")
async def _feature_get(api: Harness, name: str) -> None:
    await api.call("admin.vm.feature.Set", "work", "gui", "1")
    assert await api.call(name, "work", "gui") == "1"


@contract("admin.vm.feature.Set", "admin.vm.feature.Remove")
async def _feature_set(api: Harness, name: str) -> None:
    assert await api.call("admin.vm.feature.Set", "work", "x-test", "v") == ""
    if name.endswith("Remove"):
        assert await api.call(name, "work", "x-test") == ""


@contract("admin.vm.tag.Get", "admin.vm.tag.Set", "admin.vm.tag.Remove")
async def _tags(api: Harness, name: str) -> None:
    assert await api.call("admin.vm.tag.Set", "work", "office") == ""
    assert await api.call("admin.vm.tag.Get", "work", "office") == "1"
    assert await api.call("admin.vm.tag.Get", "work", "nope") == "0"
    if name.endswith("Remove"):
        assert await api.call(name, "work", "office") == ""


@contract("admin.label.List", "admin.label.Get", "admin.label.Index", "admin.label.Create",
          "admin.label.Remove")
async def _labels(api: Harness, name: str) -> None:
    assert "red" in names(await api.call("admin.label.List"))
    assert re.match(r"^0x[0-9a-f]{6}$", await api.call("admin.label.Get", "dom0", "red"))
    assert int(await api.call("admin.label.Index", "dom0", "red")) == 1
    assert await api.call("admin.label.Create", "dom0", "pink", "0xff00ff") == ""
    assert await api.call("admin.label.Remove", "dom0", "pink") == ""


@contract("admin.vm.notes.Get", "admin.vm.notes.Set")
async def _notes(api: Harness, name: str) -> None:
    assert await api.call("admin.vm.notes.Get", "work") == ""
    text = "bank login \u202e here\tand\nthere"
    assert await api.call("admin.vm.notes.Set", "work", "", text) == ""
    assert await api.call("admin.vm.notes.Get", "work") == "bank login _ here\tand\nthere"


# --- devices --------------------------------------------------------------------------

@contract(*per_device_class("Available"))
async def _device_available(api: Harness, name: str) -> None:
    devclass = name.split(".")[3]
    for line in (await api.call(name, "dom0")).splitlines():
        head, _, rest = line.partition(" ")
        port, _, device_id = head.partition(":")
        props = device_props(rest)
        assert props["port_id"] == port and props["device_id"] == device_id
        assert props["devclass"] == devclass and props["backend_domain"] == "dom0"
        assert len(props["interfaces"]) % 7 == 0
    assert await api.call(name, "work") == ""


@contract(*per_device_class("Assigned"))
async def _device_assigned(api: Harness, name: str) -> None:
    devclass = name.split(".")[3]
    found = assignment_lines(await api.call(name, "work"), devclass, "work")
    found += assignment_lines(await api.call(name, "sys-net"), devclass, "sys-net")
    if devclass == "block":
        assert found == [{"device_id": "QEMU_DISK", "port_id": "xvdi", "devclass": "block",
                          "backend_domain": "sys-net", "mode": "auto-attach",
                          "frontend_domain": "work", "_frontend-dev": "xvdj"}]
    if devclass == "pci":
        assert [(f["port_id"], f["_no-strict-reset"]) for f in found] == [("00_1f.6", "True")]


@contract(*per_device_class("Attached"))
async def _device_attached(api: Harness, name: str) -> None:
    devclass = name.split(".")[3]
    assert assignment_lines(await api.call(name, "work"), devclass, "work") == []


@contract(*per_device_class("Assign"), *per_device_class("Unassign"),
          *per_device_class("Set.assignment"))
async def _device_assign(api: Harness, name: str) -> None:
    devclass = name.split(".")[3]
    backend, port = ("dom0", "00_14.3") if devclass == "pci" else ("sys-net", "dev-1")
    arg = f"{backend}+{port}"
    payload = assignment_payload(backend, port, devclass, "required", **{"read-only": "yes"})
    assert await api.call(f"admin.vm.device.{devclass}.Assign", "work", arg, payload) == ""
    if name.endswith("Set.assignment"):
        assert await api.call(name, "work", arg + "+_", "auto-attach") == ""
        line = await api.call(f"admin.vm.device.{devclass}.Assigned", "work", arg)
        assert assignment_lines(line, devclass, "work")[0]["mode"] == "auto-attach"
    if name.endswith("Unassign"):
        assert await api.call(name, "work", arg) == ""
        assert await api.call(f"admin.vm.device.{devclass}.Assigned", "work", arg) == ""


@contract(*per_device_class("Attach"), *per_device_class("Detach"))
async def _device_attach(api: Harness, name: str) -> None:
    """No backend here exposes a device to attach at run time: the refusals are the
    exception types the client reports."""
    devclass = name.split(".")[3]
    backend, port = ("dom0", "00_14.3") if devclass == "pci" else ("sys-net", "dev-1")
    arg = f"{backend}+{port}"
    payload = assignment_payload(backend, port, devclass, "manual")
    reply = await api.raw(name, "work", arg, payload if name.endswith("Attach") else b"")
    assert reply is not None and reply[:2] == b"2\x00"
    exc_type = reply[2:].split(b"\x00", 1)[0]
    assert exc_type in (b"QubesVMNotRunningError", b"DeviceNotAssigned")


@contract("admin.vm.device.denied.List", "admin.vm.device.denied.Add",
          "admin.vm.device.denied.Remove")
async def _denied(api: Harness, name: str) -> None:
    assert (await api.call("admin.vm.device.denied.List", "work")).split("\n") == [
        "p0e****", "u03****"]
    assert await api.call("admin.vm.device.denied.Add", "work", "", "b******m******") == ""
    assert await api.call("admin.vm.device.denied.Remove", "work", "", "u03****") == ""
    assert (await api.call("admin.vm.device.denied.List", "work")).split("\n") == [
        "b******", "m******", "p0e****"]
    assert await api.call("admin.vm.device.denied.Remove", "work", "", "all") == ""
    assert await api.call("admin.vm.device.denied.List", "work") == ""


@contract("admin.deviceclass.List")
async def _deviceclass_list(api: Harness, name: str) -> None:
    assert names(await api.call(name)) == ["block", "mic", "pci", "usb"]


# --- lifecycle ----------------------------------------------------------------------

@contract("admin.vm.Start", "admin.vm.Shutdown", "admin.vm.Kill", "admin.vm.Pause",
          "admin.vm.Unpause", "admin.vm.CurrentState")
async def _lifecycle(api: Harness, name: str) -> None:
    assert await api.call("admin.vm.Start", "sys-net") == ""
    state = dict(item.split("=", 1) for item in (
        await api.call("admin.vm.CurrentState", "sys-net")).split(" "))
    assert state["power_state"] == "Running"
    assert all(int(state[k]) >= 0 for k in ("mem", "mem_static_max", "cputime"))
    assert property_reply(await api.call("admin.vm.property.Get", "sys-net", "xid"))[2] != "-1"
    assert await api.call("admin.vm.device.pci.Attached", "sys-net") != ""
    if name in ("admin.vm.Pause", "admin.vm.Unpause"):
        assert await api.call("admin.vm.Pause", "sys-net") == ""
        assert await api.call("admin.vm.Unpause", "sys-net") == ""
    if name == "admin.vm.Shutdown":
        assert await api.call(name, "sys-net") == ""
    else:
        assert await api.call("admin.vm.Kill", "sys-net") == ""


@contract("admin.vm.Suspend", "admin.vm.Resume")
async def _suspend(api: Harness, name: str) -> None:
    # libvirt's test driver cannot suspend to memory: the VM is paused, as Qubes does
    # for a system that cannot suspend, and Resume unpauses it.
    assert await api.call("admin.vm.Start", "sys-net") == ""
    assert await api.call("admin.vm.Suspend", "sys-net") == ""
    assert "power_state=Paused" in await api.call("admin.vm.CurrentState", "sys-net")
    assert await api.call("admin.vm.Resume", "sys-net") == ""
    assert "power_state=Running" in await api.call("admin.vm.CurrentState", "sys-net")
    with pytest.raises(exc.QubesVMNotPausedError, match="not suspended or paused"):
        await api.call("admin.vm.Resume", "sys-net")
    assert await api.call("admin.vm.Kill", "sys-net") == ""
    with pytest.raises(exc.QubesVMNotRunningError, match="it is Halted"):
        await api.call("admin.vm.Suspend", "sys-net")


@contract("admin.vm.Console")
async def _console(api: Harness, name: str) -> None:
    with pytest.raises(exc.QubesVMNotRunningError):
        await api.call(name, "sys-net")
    assert await api.call("admin.vm.Start", "sys-net") == ""
    # The test driver gives a domain no console pty (only Xen does): a clear refusal.
    with pytest.raises(exc.QubesVMError, match="has no console terminal in the test"):
        await api.call(name, "sys-net")
    await api.call("admin.vm.Kill", "sys-net")


STATS_KEYS = ("memory_kb", "memory_assigned_total", "memory_assigned_usable",
              "memory_with_swap_used", "cpu_time", "cpu_usage", "online_vcpus")


@contract("admin.vm.Stats")
async def _stats(api: Harness, name: str) -> None:
    """Events in admin.Events' format, as the client's EventsDispatcher reads them."""
    import asyncio

    assert await api.call("admin.vm.Start", "sys-net") == ""
    await api.server.start()
    try:
        reader, writer = await open_stream(api, name)
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"1\x00"
        assert await asyncio.wait_for(reader.readuntil(b"\x00\x00"), 10) == (
            b"\x00connection-established\x00\x00")
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"1\x00"
        fields = (await asyncio.wait_for(reader.readuntil(b"\x00\x00"), 10)
                  ).decode().split("\x00")[:-2]
        subject, event, pairs = fields[0], fields[1], fields[2:]
        assert (subject, event) == ("sys-net", "vm-stats")
        stats = dict(zip(pairs[::2], pairs[1::2], strict=True))
        assert set(stats) == set(STATS_KEYS)
        assert int(stats["memory_kb"]) > 0 and int(stats["online_vcpus"]) > 0
        assert 0 <= int(stats["cpu_usage"]) <= 100 and int(stats["cpu_time"]) >= 0
        writer.close()
    finally:
        await api.server.stop()
        await api.call("admin.vm.Kill", "sys-net")


# --- creation and removal ----------------------------------------------------------------

@contract("admin.vm.Create.AppVM", "admin.vm.Create.StandaloneVM", "admin.vm.Create.TemplateVM",
          "admin.vm.Create.DispVM", "admin.vm.CreateInPool.AppVM",
          "admin.vm.CreateInPool.StandaloneVM", "admin.vm.CreateInPool.TemplateVM",
          "admin.vm.CreateInPool.DispVM", "admin.vm.Remove")
async def _create(api: Harness, name: str) -> None:
    klass = name.rsplit(".", 1)[1] if "Create" in name else "AppVM"
    arg = {"AppVM": "debian-12", "DispVM": "work-dvm"}.get(klass, "")
    payload = "name=new-vm label=red" + (" pool=varlibqubes" if "InPool" in name else "")
    assert await api.call(f"admin.vm.{name.split('.')[2]}.{klass}" if "Create" in name
                          else "admin.vm.Create.AppVM", "dom0", arg, payload) == ""
    assert property_reply(await api.call("admin.vm.property.Get", "new-vm", "klass"))[2] == (
        klass)
    if name == "admin.vm.Remove":
        assert await api.call(name, "new-vm") == ""


@contract("admin.vm.CreateDisposable")
async def _create_disposable(api: Harness, name: str) -> None:
    created = await api.call(name, "work-dvm")
    assert re.match(r"^disp[0-9]+$", created)


# --- storage ----------------------------------------------------------------------------------

VOLUME_KEYS = ("pool", "vid", "size", "usage", "rw", "source", "save_on_stop", "snap_on_start",
               "revisions_to_keep", "ephemeral", "is_outdated")


@contract("admin.vm.volume.List", "admin.vm.volume.Info", "admin.vm.volume.ListSnapshots",
          "admin.vm.volume.Set.revisions_to_keep", "admin.vm.volume.Set.rw",
          "admin.vm.volume.Resize", "admin.vm.volume.Revert")
async def _volumes(api: Harness, name: str) -> None:
    assert {"root", "private", "volatile"} <= set(names(
        await api.call("admin.vm.volume.List", "work")))
    info = key_values(await api.call("admin.vm.volume.Info", "work", "private"))
    assert set(VOLUME_KEYS) <= set(info)
    for key in ("size", "usage", "revisions_to_keep"):
        int(info[key])
    for key in ("rw", "save_on_stop", "snap_on_start", "ephemeral", "is_outdated"):
        assert info[key] in ("True", "False")
    names(await api.call("admin.vm.volume.ListSnapshots", "work", "private"))
    if name == "admin.vm.volume.Set.revisions_to_keep":
        assert await api.call(name, "work", "private", "2") == ""
    if name == "admin.vm.volume.Set.rw":
        assert await api.call(name, "work", "private", "True") == ""
    if name == "admin.vm.volume.Resize":
        assert await api.call(name, "work", "private", str(int(info["size"]) * 2)) == ""
    if name == "admin.vm.volume.Revert":
        await api.call("admin.vm.Start", "work")
        await api.call("admin.vm.Kill", "work")
        revisions = names(await api.call("admin.vm.volume.ListSnapshots", "work", "private"))
        assert revisions
        assert await api.call(name, "work", "private", revisions[-1]) == ""


@contract("admin.vm.volume.CloneFrom", "admin.vm.volume.CloneTo")
async def _clone_volume(api: Harness, name: str) -> None:
    token = await api.call("admin.vm.volume.CloneFrom", "work", "private")
    assert re.match(r"^[A-Za-z0-9_+/=-]+$", token)
    assert await api.call("admin.vm.volume.CloneTo", "sys-firewall", "private", token) == ""


@contract("admin.vm.volume.Import", "internal.vm.volume.ImportBegin",
          "internal.vm.volume.ImportEnd")
async def _import(api: Harness, name: str) -> None:
    size = int(key_values(await api.call("admin.vm.volume.Info", "work", "private"))["size"])
    if name == "admin.vm.volume.Import":
        assert await api.call(name, "work", "private", b"\0" * 4096) == ""
        return
    path = await api.call("internal.vm.volume.ImportBegin", "work", "private", str(size),
                          kind="internal")
    assert path.startswith("/")
    assert await api.call("internal.vm.volume.ImportEnd", "work", "private", "ok",
                          kind="internal") == ""


@contract("admin.pool.List", "admin.pool.ListDrivers", "admin.pool.Info", "admin.pool.Add",
          "admin.pool.Remove", "admin.pool.Set.revisions_to_keep")
async def _pools(api: Harness, name: str) -> None:
    assert "varlibqubes" in names(await api.call("admin.pool.List"))
    for line in (await api.call("admin.pool.ListDrivers")).splitlines():
        assert line.split(" ")[0]
    info = key_values(await api.call("admin.pool.Info", "dom0", "varlibqubes"))
    assert info["driver"] == "file-reflink" and int(info["revisions_to_keep"]) >= 0
    if name == "admin.pool.Set.revisions_to_keep":
        assert await api.call(name, "dom0", "varlibqubes", "2") == ""
    if name in ("admin.pool.Add", "admin.pool.Remove"):
        pool_dir = api.app.base_dir / "extra-pool"
        options = f"dir_path={pool_dir}\nsetup_check=no\n"
        assert await api.call("admin.pool.Add", "dom0", "file-reflink", "name=extra\n"
                              + options) == ""
        assert await api.call("admin.pool.Remove", "dom0", "extra") == ""


@contract("admin.pool.UsageDetails", "admin.pool.volume.List",
          "admin.pool.Set.ephemeral_volatile", "admin.vm.volume.Set.ephemeral")
async def _pool_details(api: Harness, name: str) -> None:
    usage = key_values(await api.call("admin.pool.UsageDetails", "dom0", "varlibqubes"))
    assert set(usage) == {"data_size", "data_usage"}
    assert 0 <= int(usage["data_usage"]) <= int(usage["data_size"])
    listing = await api.call("admin.pool.volume.List", "dom0", "varlibqubes")
    assert listing.endswith("\n")
    vids = listing.splitlines()
    assert "appvms/work/private" in vids and "vm-templates/debian-12/root" in vids
    volatile = ("admin.vm.volume.Info", "work", "volatile")
    assert key_values(await api.call(*volatile))["ephemeral"] == "False"
    if name == "admin.pool.Set.ephemeral_volatile":
        assert await api.call(name, "dom0", "varlibqubes", "True") == ""
        assert key_values(await api.call(
            "admin.pool.Info", "dom0", "varlibqubes"))["ephemeral_volatile"] == "True"
        assert key_values(await api.call(*volatile))["ephemeral"] == "True"
        # A volume that keeps its data is never ephemeral by its pool's default.
        assert key_values(await api.call(
            "admin.vm.volume.Info", "work", "private"))["ephemeral"] == "False"
    if name == "admin.vm.volume.Set.ephemeral":
        assert await api.call(name, "work", "volatile", "True") == ""
        assert key_values(await api.call(*volatile))["ephemeral"] == "True"
        with pytest.raises(exc.QubesValueError, match="can be ephemeral"):
            await api.call(name, "work", "private", "True")


@contract("admin.vm.volume.Clear", "admin.vm.volume.ImportWithSize")
async def _clear_import_with_size(api: Harness, name: str) -> None:
    volume = api.app.domains["work"].volumes["private"]
    assert await api.call("admin.vm.volume.ImportWithSize", "work", "private",
                          b"8192\n" + b"\x01" * 100) == ""
    assert key_values(await api.call("admin.vm.volume.Info", "work", "private"))[
        "size"] == "8192"
    image = volume.export_path()
    with open(image, "rb") as data:
        assert data.read() == b"\x01" * 100 + b"\0" * 8092
    if name == "admin.vm.volume.Clear":
        assert await api.call(name, "work", "private") == ""
        with open(volume.export_path(), "rb") as data:
            assert data.read() == b"\0" * 8192
        assert len(names(await api.call("admin.vm.volume.ListSnapshots", "work",
                                        "private"))) >= 1


@contract("admin.backup.Execute", "admin.backup.Info", "admin.backup.Cancel")
async def _backup(api: Harness, name: str) -> None:
    """Info is the text qvm-backup prints; Execute and Cancel reply empty (a Cancel of a
    profile that is not running is refused with a QubesException, as in Qubes)."""
    out = api.app.base_dir / "backups"
    out.mkdir()
    profiles = api.server.paths.etc_dir / "qubes" / "backup"
    profiles.mkdir(parents=True)
    (profiles / "daily.conf").write_text(
        f"destination_vm: dom0\ndestination_path: {out}\ninclude: [work-dvm]\n"
        "compression: false\npassphrase_text: secret\n")
    info = await api.call("admin.backup.Info", "dom0", "daily")
    assert "work-dvm" in info and "VMs not selected for backup:" in info
    if name == "admin.backup.Cancel":
        with pytest.raises(exc.QubesException, match="no backup of profile"):
            await api.call(name, "dom0", "daily")
    if name == "admin.backup.Execute":
        from qubes_core.backup import scrypt

        scrypt.DEFAULT_LOG_N, saved = 10, scrypt.DEFAULT_LOG_N  # the same format, cheaper
        try:
            assert await api.call(name, "dom0", "daily") == ""
        finally:
            scrypt.DEFAULT_LOG_N = saved
        assert len(list(out.iterdir())) == 1


# --- firewall, events, system information, VM-facing calls --------------------------

@contract("admin.vm.firewall.Get", "admin.vm.firewall.Set", "admin.vm.firewall.Reload")
async def _firewall(api: Harness, name: str) -> None:
    rules = "action=accept dsthost=10.0.0.1 proto=tcp dstports=443\naction=drop\n"
    assert await api.call("admin.vm.firewall.Set", "work", "", rules) == ""
    rules = [dict(item.split("=", 1) for item in line.split(" "))
             for line in (await api.call("admin.vm.firewall.Get", "work")).splitlines()]
    assert rules == [{"action": "accept", "dsthost": "10.0.0.1/32", "proto": "tcp",
                      "dstports": "443-443"}, {"action": "drop"}]
    assert await api.call("admin.vm.firewall.Reload", "work") == ""


@contract("admin.Events")
async def _events(api: Harness, name: str) -> None:
    import asyncio

    await api.server.start()
    try:
        reader, writer = await open_stream(api, name)
        head = await asyncio.wait_for(reader.readexactly(2), 10)
        assert head == b"1\x00"  # 0x31 0x00: an event follows
        rest = await asyncio.wait_for(reader.readuntil(b"\x00\x00"), 10)
        assert rest == b"\x00connection-established\x00\x00"
        writer.close()
    finally:
        await api.server.stop()


@contract("internal.GetSystemInfo")
async def _system_info(api: Harness, name: str) -> None:
    info = json.loads(await api.call(name, kind="internal"))
    assert info["domains"]["work"]["tags"] and info["domains"]["dom0"]["type"] == "AdminVM"


@contract("qubes.GetDate")
async def _get_date(api: Harness, name: str) -> None:
    reply = await api.call(name, "dom0", src="work", kind="misc")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", reply)


@contract("qubes.FeaturesRequest", "qubes.NotifyTools", "qubes.NotifyUpdates")
async def _vm_reports(api: Harness, name: str) -> None:
    payload = "1" if name == "qubes.NotifyUpdates" else ""
    assert await api.call(name, "dom0", "", payload, src="debian-12", kind="misc") == ""


@contract("policy.RegisterArgument")
async def _register_argument(api: Harness, name: str) -> None:
    reply = await api.raw(name, "work", "qubes.Filecopy", "some-arg", src="sys-net",
                          kind="misc")
    assert reply is not None and reply[:1] in (b"0", b"2")


# --- the tests ----------------------------------------------------------------------------------

def _registry_names() -> list[str]:
    return sorted(spec.name for spec in registry.all_methods())


def test_every_method_has_a_contract():
    missing = sorted(set(_registry_names()) - set(CONTRACTS))
    assert missing == []
    assert sorted(set(CONTRACTS) - set(_registry_names())) == []


@pytest.mark.parametrize("name", _registry_names())
async def test_reply_parses_as_the_client_expects(api, name):
    await CONTRACTS[name](api, name)

