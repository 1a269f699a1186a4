"""A streaming call learns that its client hung up from the socket itself, at once."""

from __future__ import annotations

import asyncio
import socket

from qubes_core.api.server import Connection
from tests.support import loop_turns


async def test_wait_hangup_returns_when_the_client_closes_not_at_its_eof() -> None:
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_unix_connection(sock=server_end)
    try:
        client_end.sendall(b"request")
        client_end.shutdown(socket.SHUT_WR)  # the request ends with EOF, as on the wire
        assert await reader.read() == b"request"
        hangup = asyncio.ensure_future(Connection(writer).wait_hangup())
        # The client still reads the stream: writing to it must not end the wait.
        await Connection(writer).send(b"event")
        assert client_end.recv(16) == b"event"
        await loop_turns()  # a hangup reported now would have ended the wait
        assert not hangup.done()
        client_end.close()
        await asyncio.wait_for(hangup, 5)
    finally:
        writer.close()
        client_end.close()


async def test_wait_hangup_of_a_closed_connection_returns_at_once() -> None:
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    _reader, writer = await asyncio.open_unix_connection(sock=server_end)
    writer.close()
    await asyncio.wait_for(Connection(writer).wait_hangup(), 5)
    client_end.close()
