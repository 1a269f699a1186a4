"""The framing of :mod:`qubes_core.agent.wire` on non-blocking sockets in qubesd's loop.

Invariant: no read from a VM ever blocks the event loop or buffers more than one
message (:data:`~qubes_core.agent.wire.MAX_MESSAGE`); descriptors that arrive with a
message belong to the caller, which closes them.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

from qubes_core.agent import wire


async def wait_ready(fd: int, writing: bool = False) -> None:
    """Until ``fd`` is readable (or writable), without blocking the loop."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    add, remove = ((loop.add_writer, loop.remove_writer) if writing
                   else (loop.add_reader, loop.remove_reader))
    add(fd, lambda: None if future.done() else future.set_result(None))
    try:
        await future
    finally:
        remove(fd)


async def read_pipe(fd: int, limit: int) -> bytes | None:
    """All of a pipe up to its end, without blocking the loop; None past ``limit`` bytes."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) <= limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await wait_ready(fd)
            continue
        if not chunk:
            return data
        data += chunk
    return None


async def write_pipe(fd: int, data: bytes) -> None:
    """Write to a pipe without blocking the loop; a reader that left is ignored."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await wait_ready(fd, writing=True)
        except OSError:
            return


async def _recv_some(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(
                size, socket.CMSG_SPACE(wire.MAX_FDS * 4))
        except (BlockingIOError, InterruptedError):
            await wait_ready(sock.fileno())
            continue
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % 4])
                fds.extend(got)
        return data


async def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and its descriptors; ``(None, [])`` on a clean hang-up."""
    fds: list[int] = []
    try:
        header = b""
        while len(header) < wire.HEADER_SIZE:
            chunk = await _recv_some(sock, wire.HEADER_SIZE - len(header), fds)
            if not chunk:
                if header or fds:
                    raise wire.WireError("the peer hung up in the middle of a message")
                return None, []
            header += chunk
        size = wire.header_size(header)
        body = b""
        while len(body) < size:
            chunk = await _recv_some(sock, size - len(body), fds)
            if not chunk:
                raise wire.WireError("the peer hung up in the middle of a message")
            body += chunk
        if len(fds) > wire.MAX_FDS:
            raise wire.WireError("too many descriptors with one message")
        return wire.decode(body), fds
    except BaseException:
        wire.close_all(fds)
        raise


async def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
               ) -> None:
    """Send ``message`` (with ``fds``); waits while the peer's buffer is full."""
    loop = asyncio.get_running_loop()
    data = wire.encode(message)
    if fds:
        while True:
            try:
                sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))])
                break
            except (BlockingIOError, InterruptedError):
                await asyncio.sleep(0.001)
        data = data[sent:]
    if data:
        await loop.sock_sendall(sock, data)


@contextlib.contextmanager
def unix_address(path: str) -> Iterator[str]:
    """An address for ``path`` that fits sun_path, valid inside the ``with`` block.

    A long path is reached through a descriptor of its directory, which this closes.
    """
    if len(path.encode()) < 100:
        yield path
        return
    directory, name = os.path.split(path)
    dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dirfd}/{name}"
    finally:
        os.close(dirfd)


def listen(path: str, backlog: int = 64, mode: int = 0o600) -> socket.socket:
    """A non-blocking listening socket at ``path`` (an old one there is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            sock.bind(address)
    except BaseException:
        sock.close()
        raise
    os.chmod(path, mode)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def connect(path: str) -> socket.socket:
    """A non-blocking connection to ``path``; refused at once when its backlog is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        with unix_address(path) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock
