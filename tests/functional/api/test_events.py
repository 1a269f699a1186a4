"""admin.Events over a real socket, served in-process."""

from __future__ import annotations

import asyncio

import pytest

from qubes_core import protocol
from qubes_core.api.events import broadcaster
from tests.support import wait_until_async


@pytest.fixture
async def served(api):
    await api.server.start()
    yield api
    await api.server.stop()


async def open_events(api, dest="dom0"):
    reader, writer = await asyncio.open_unix_connection(str(api.server.paths.admin_socket))
    writer.write(protocol.encode_request("admin.Events", "dom0", dest))
    writer.write_eof()
    return reader, writer


async def next_events(reader, buffer, count, timeout=5.0):
    found = []
    while len(found) < count:
        chunk = await asyncio.wait_for(reader.read(65536), timeout)
        assert chunk, "stream ended"
        buffer.extend(chunk)
        found.extend(protocol.split_events(buffer))
    return found


async def test_stream_starts_with_connection_established(served):
    reader, writer = await open_events(served)
    buffer = bytearray()
    assert await next_events(reader, buffer, 1) == [("", "connection-established", {})]
    await served.call("admin.vm.feature.Set", "work", "gui", "1")
    events = await next_events(reader, buffer, 2)
    assert ("work", "domain-feature-pre-set:gui",
            {"feature": "gui", "value": "1", "oldvalue": ""}) in events
    assert ("work", "domain-feature-set:gui",
            {"feature": "gui", "value": "1", "oldvalue": ""}) in events
    writer.close()


async def test_app_events_and_new_vms(served):
    reader, writer = await open_events(served)
    buffer = bytearray()
    await next_events(reader, buffer, 1)
    await served.call("admin.vm.Create.AppVM", "dom0", "", "name=late label=red")
    await served.call("admin.vm.tag.Set", "late", "t")
    seen = []
    while ("late", "domain-tag-add:t", {"tag": "t"}) not in seen:
        seen.extend(await next_events(reader, buffer, 1))
    assert ("", "domain-add", {"vm": "late"}) in seen
    assert not [e for e in seen if e[1].startswith("admin-permission")]
    writer.close()


async def test_vm_destination_only_gets_its_events(served):
    reader, writer = await open_events(served, "work")
    buffer = bytearray()
    await next_events(reader, buffer, 1)
    await served.call("admin.vm.tag.Set", "sys-net", "other")
    await served.call("admin.vm.tag.Set", "work", "mine")
    events = await next_events(reader, buffer, 2)
    assert {subject for subject, _, _ in events} == {"work"}
    writer.close()


async def test_hangup_unsubscribes(served):
    reader, writer = await open_events(served)
    await next_events(reader, bytearray(), 1)
    hub = broadcaster(served.server)
    assert len(hub.subscribers) == 1
    writer.close()
    await wait_until_async(lambda: not hub.subscribers, what="the subscriber leaving")
    # With nobody listening the handlers are gone from the model again.
    assert not served.app._instance_handlers.get("*")


async def test_events_refused_to_vm_without_grant(served):
    reader, writer = await asyncio.open_unix_connection(str(served.server.paths.admin_socket))
    writer.write(protocol.encode_request("admin.Events", "work", "dom0"))
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.fixture
def filtered_events():
    """Grant admin.Events to ``work``, with a listing filter that shows it only the sys-*
    VMs and itself, asking the model as a policy does (a VM gone from it is hidden)."""
    from qubes_core.vm.base import BaseVM

    def visible(vm):
        return (vm.name.startswith("sys-") or vm.name == "work") and vm in vm.app.domains

    def grant(vm, event, **kwargs):
        return [True, visible]

    BaseVM.add_class_handler("admin-permission:admin.Events", grant)
    yield
    BaseVM.remove_class_handler("admin-permission:admin.Events", grant)


async def test_filtered_subscriber_hears_nothing_of_hidden_vms(served, filtered_events):
    reader, writer = await asyncio.open_unix_connection(str(served.server.paths.admin_socket))
    writer.write(protocol.encode_request("admin.Events", "work", "dom0"))
    writer.write_eof()
    buffer = bytearray()
    assert await next_events(reader, buffer, 1) == [("", "connection-established", {})]
    await served.call("admin.vm.Create.AppVM", "dom0", "", "name=hidden label=red")
    await served.call("admin.property.Set", "dom0", "default_dispvm", "")
    await served.call("admin.vm.tag.Set", "hidden", "secret")
    await served.call("admin.vm.property.Set", "hidden", "provides_network", "True")
    await served.call("admin.vm.property.Set", "hidden", "netvm", "")  # no loop via default
    await served.call("admin.property.Set", "dom0", "default_netvm", "hidden")
    await served.call("admin.property.Set", "dom0", "default_netvm", "")
    await served.call("admin.vm.Remove", "hidden")
    await served.call("admin.vm.Create.AppVM", "dom0", "", "name=sys-usb label=red")
    await served.call("admin.vm.Remove", "sys-usb")
    await served.call("admin.vm.tag.Set", "work", "done")
    seen = []
    while ("work", "domain-tag-add:done", {"tag": "done"}) not in seen:
        seen.extend(await next_events(reader, buffer, 1))
    writer.close()
    assert not [event for event in seen if "hidden" in str(event)], seen
    # What it may see still comes, removal included.
    assert ("", "domain-add", {"vm": "sys-usb"}) in seen
    assert ("", "domain-delete", {"vm": "sys-usb"}) in seen
    # App events that name no VM are not filtered.
    assert any(event[1] == "property-set:default_dispvm" for event in seen)
