"""Device assignments of every class, the denied list and notes through the API:
refusals, persistence, and what a hostile payload cannot do."""

from __future__ import annotations

import pytest

from qubes_core import exc
from qubes_core.app import Qubes


def on_disk(api):
    path = api.app.store.path
    return Qubes(path, lock=False)


def block_payload(mode="required", port="loop7", backend="dom0", **options):
    fields = [f"device_id='*' port_id='{port}' devclass='block' backend_domain='{backend}'",
              f"mode='{mode}'"] + [f"_{k}='{v}'" for k, v in options.items()]
    return " ".join(fields)


async def test_block_assignment_saved_and_mode_changed(api):
    await api.call("admin.vm.device.block.Assign", "work", "dom0+loop7",
                   block_payload(**{"read-only": "yes"}))
    await api.call("admin.vm.device.block.Set.assignment", "work", "dom0+loop7+_",
                   "ask-to-attach")
    reloaded = on_disk(api)
    assigned = reloaded.domains["work"].devices["block"].assignments()
    assert [(a.backend_domain, a.ident, a.mode, a.options) for a in assigned] == [
        ("dom0", "loop7", "ask-to-attach", {"read-only": "yes"})]
    reloaded.close()


@pytest.mark.parametrize(("payload", "error"), [
    (block_payload(mode="manual"), exc.QubesValueError),
    (block_payload(mode="always"), exc.ProtocolError),
    (block_payload(port="loop8"), exc.UnexpectedDeviceProperty),
    (block_payload(backend="sys-net"), exc.UnexpectedDeviceProperty),
    (block_payload() + " frontend_domain='sys-net'", exc.UnexpectedDeviceProperty),
    (block_payload() + " colour='red'", exc.UnexpectedDeviceProperty),
    (block_payload(**{"x": "a;b"}), exc.QubesValueError),
    ("device_id='*' port_id='loop7", exc.ProtocolError),
    ("mode='required' mode='required'", exc.ProtocolError),
    (b"mode='\xff'", exc.QubesValueError),
])
async def test_bad_assignments_refused_and_change_nothing(api, payload, error):
    before = api.app.store.path.read_bytes()
    with pytest.raises(error):
        await api.call("admin.vm.device.block.Assign", "work", "dom0+loop7", payload)
    assert not api.app.domains["work"].devices["block"]
    assert api.app.store.path.read_bytes() == before


async def test_assignment_to_dom0_and_bad_modes_refused(api):
    with pytest.raises(exc.QubesVMError):
        await api.call("admin.vm.device.block.Assign", "dom0", "dom0+loop7", block_payload())
    await api.call("admin.vm.device.block.Assign", "work", "dom0+loop7", block_payload())
    with pytest.raises(exc.QubesUnrecognizedDeviceAssignmentMode):
        await api.call("admin.vm.device.block.Set.assignment", "work", "dom0+loop7",
                       "manual")
    with pytest.raises(exc.QubesValueError):
        await api.call("admin.vm.device.usb.Set.assignment", "work", "dom0+loop7",
                       "required")


async def test_denied_list_refuses_bad_payloads(api):
    for payload in ("u03****u03****", "x03****", "u03***"):
        with pytest.raises(exc.ProtocolError):
            await api.call("admin.vm.device.denied.Add", "work", "", payload)
    with pytest.raises(exc.QubesValueError, match="control character"):
        await api.call("admin.vm.device.denied.Add", "work", "", "p0e****\n")
    assert api.app.domains["work"].devices_denied == ""
    await api.call("admin.vm.device.denied.Add", "work", "", "u03****")
    await api.call("admin.vm.device.denied.Add", "work", "", "u03****")  # already there
    assert await api.call("admin.vm.device.denied.List", "work") == "u03****"


async def test_notes_limits(api):
    with pytest.raises(exc.QubesVMError):
        await api.call("admin.vm.notes.Set", "dom0", "", "x")
    with pytest.raises(exc.ProtocolError):
        await api.call("admin.vm.notes.Set", "work", "", b"\xff\xfe")
    # Above the 64 KiB request limit (Qubes' too) the connection is closed unanswered.
    assert await api.raw("admin.vm.notes.Set", "work", "", "x" * 70000) is None
    await api.call("admin.vm.notes.Set", "work", "", "é" * 1000 + "\x1b[31m\x00")
    assert await api.call("admin.vm.notes.Get", "work") == "é" * 1000 + "_[31m_"
    assert (api.app.domains["work"].dir_path / "notes.txt").exists()
