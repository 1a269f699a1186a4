"""admin.Events over a real socket, served in-process."""

from __future__ import annotations

import asyncio

import pytest

from qubes_core.api import protocol
from qubes_core.api.events import broadcaster


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
    for _ in range(50):
        if not hub.subscribers:
            break
        await asyncio.sleep(0.1)
    assert not hub.subscribers
    # With nobody listening the handlers are gone from the model again.
    assert not served.app._instance_handlers.get("*")


async def test_events_refused_to_vm_without_grant(served):
    reader, writer = await asyncio.open_unix_connection(str(served.server.paths.admin_socket))
    writer.write(protocol.encode_request("admin.Events", "work", "dom0"))
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
