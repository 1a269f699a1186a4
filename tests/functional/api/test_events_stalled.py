"""A reader of ``admin.Events`` that stops reading is dropped with a last record,
and what waits for it stays within its bounds, in bytes and in events.

The server runs in-process on real Unix sockets; the reader is a real client
whose socket buffers fill up once it stops reading.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from qubes_core import protocol
from qubes_core.api import events
from qubes_core.api.server import QubesdServer
from qubes_core.app import Qubes
from qubes_core.paths import resolve
from tests.support import wait_until_async

BIG_VALUE = 60 * 1024  # a feature value near the largest a request can carry


@pytest.fixture
async def served(basic_app: Qubes, tmp_path: Path) -> Any:
    server = QubesdServer(basic_app, resolve(tmp_path))
    await server.start()
    yield server
    await server.stop()


async def _subscribe(server: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(server.paths.admin_socket))
    writer.write(protocol.encode_request("admin.Events", "dom0", "dom0", "", b""))
    writer.write_eof()
    await asyncio.wait_for(reader.readuntil(b"connection-established\x00\x00"), 10)
    return reader, writer


async def _stall_until_dropped(server: Any, make_event: Any, limit: int) -> int:
    """Fire events while the reader reads nothing, until the server drops it; the most
    bytes that ever waited for it."""
    hub = events.broadcaster(server)
    (subscriber,) = hub.subscribers
    most = 0
    for number in range(limit):
        make_event(number)
        most = max(most, subscriber.queued_bytes)
        assert len(subscriber.queue) <= events.MAX_QUEUED
        await asyncio.sleep(0)  # the server tries to send meanwhile
        if subscriber.dropped.is_set():
            break
    else:
        pytest.fail(f"the stalled reader was not dropped after {limit} events")
    assert not subscriber.queue  # freed at once
    return most


async def _read_to_end(reader: asyncio.StreamReader) -> list[tuple[str, str, dict[str, str]]]:
    """The records up to the end of the stream, as a client parses them."""
    data = bytearray(await asyncio.wait_for(reader.read(), 30))
    records = protocol.split_events(data)
    assert not data, "the stream ends with a whole record"
    return records


async def test_a_stalled_reader_is_dropped_within_the_byte_bound(served: Any,
                                                                 monkeypatch: Any) -> None:
    monkeypatch.setattr(events, "DROP_GRACE", 60.0)  # time for the reader to come back
    reader, writer = await _subscribe(served)
    work = served.app.domains["work"]

    def big_feature(number: int) -> None:
        work.features["blob"] = f"{number:08d}".ljust(BIG_VALUE, "x")

    most = await _stall_until_dropped(served, big_feature, 2000)
    assert most <= events.MAX_QUEUED_BYTES
    records = await _read_to_end(reader)
    subject, event, kwargs = records[-1]
    assert (subject, event) == ("", events.DROPPED_EVENT)
    assert "bytes of events waiting" in kwargs["reason"]
    assert {event for _, event, _ in records[:-1]} <= {"domain-feature-pre-set:blob",
                                                    "domain-feature-set:blob"}
    assert len(records) < 2000  # dropped, not delivered in full
    assert not events.broadcaster(served).subscribers
    writer.close()
    # The server goes on serving, and a new reader starts afresh.
    reader, writer = await _subscribe(served)
    work.features["after"] = "1"
    await asyncio.wait_for(reader.readuntil(b"domain-feature-set:after\x00"), 10)
    writer.close()


async def test_a_stalled_reader_is_dropped_within_the_event_bound(served: Any,
                                                                  monkeypatch: Any) -> None:
    monkeypatch.setattr(events, "MAX_QUEUED", 50)
    monkeypatch.setattr(events, "DROP_GRACE", 60.0)
    reader, writer = await _subscribe(served)
    work = served.app.domains["work"]
    # Small events: the reader's socket buffers take many before the server waits.
    await _stall_until_dropped(served, lambda n: work.features.__setitem__("n", str(n)),
                               200_000)
    records = await _read_to_end(reader)
    assert records[-1][1:] == (events.DROPPED_EVENT, {"reason": "more than 50 events waiting"})
    writer.close()


async def test_a_dropped_reader_that_never_reads_again_is_cut_off(served: Any,
                                                                  monkeypatch: Any) -> None:
    monkeypatch.setattr(events, "DROP_GRACE", 0.1)
    reader, writer = await _subscribe(served)
    work = served.app.domains["work"]
    await _stall_until_dropped(
        served, lambda n: work.features.__setitem__("blob", f"{n:08d}".ljust(BIG_VALUE, "y")),
        2000)
    await wait_until_async(lambda: not served._connections, what="the connection cut off")
    writer.close()
