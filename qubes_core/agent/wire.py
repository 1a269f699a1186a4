"""Framing between a VM and qubesd: one JSON object per message, file descriptors beside it.

A message is a 4-byte big-endian length, then that many bytes of UTF-8 JSON (an
object); descriptors travel as SCM_RIGHTS with the length. Messages are at most
:data:`MAX_MESSAGE` bytes, and at most three descriptors (stdin, stdout, stderr)
come with one, so a peer can neither make the other side buffer without bound nor
fill its descriptor table. Both ends treat what they receive as untrusted.
"""

from __future__ import annotations

import array
import json
import os
import socket
import stat
import struct

TYPE_CHECKING = False  # typing is not imported at run time: every VM start and tool pays it
if TYPE_CHECKING:
    from typing import Any

MAX_MESSAGE = 65536
MAX_FDS = 3
_HEADER = struct.Struct(">I")


class WireError(Exception):
    """The peer broke the framing (too long, not JSON, not an object) or hung up early."""


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
         ) -> None:
    """Send ``message`` (and ``fds``) on the blocking socket ``sock``."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise WireError(f"message of {len(body)} bytes is over the limit of {MAX_MESSAGE}")
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", fds))])
        data = data[sent:]
    if data:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise WireError("the peer hung up in the middle of a message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and its descriptors; ``(None, [])`` when the peer hung up cleanly."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(
        _HEADER.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    received = list(fds)
    try:
        if not data:
            if received:
                raise WireError("descriptors without a message")
            return None, []
        if len(data) < _HEADER.size:
            data += _recv_exact(sock, _HEADER.size - len(data))
        (size,) = _HEADER.unpack(data)
        if size > MAX_MESSAGE:
            raise WireError(f"message of {size} bytes is over the limit of {MAX_MESSAGE}")
        return decode(_recv_exact(sock, size)), received
    except BaseException:
        close_all(received)
        raise


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``; anything else is a :class:`WireError`."""
    try:
        message = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as error:
        raise WireError(f"not a JSON message: {error}") from None
    if not isinstance(message, dict):
        raise WireError("a message must be a JSON object")
    return message


def encode(message: dict[str, Any]) -> bytes:
    """``message`` framed for a stream (no descriptors), as :func:`send` frames it."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise WireError(f"message of {len(body)} bytes is over the limit of {MAX_MESSAGE}")
    return _HEADER.pack(len(body)) + body


def header_size(data: bytes) -> int:
    """The body length announced by a 4-byte header (checked against the limit)."""
    (size,) = _HEADER.unpack(data)
    if size > MAX_MESSAGE:
        raise WireError(f"message of {size} bytes is over the limit of {MAX_MESSAGE}")
    return size


HEADER_SIZE = _HEADER.size


def close_all(fds: list[int]) -> None:
    """Close every descriptor of ``fds``, ignoring those already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def check_stdio(fds: list[int]) -> None:
    """The three descriptors of a call must be pipes: stdin readable, stdout and stderr
    writable. Anything else (a terminal, a file, a directory) would give the other side
    more than a byte stream, so it is refused.
    """
    if len(fds) != 3:
        raise WireError(f"a call needs 3 descriptors (stdin, stdout, stderr), got {len(fds)}")
    import fcntl

    for index, fd in enumerate(fds):
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise WireError("the descriptors of a call must be pipes")
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        wanted = os.O_RDONLY if index == 0 else os.O_WRONLY
        if mode != wanted:
            raise WireError("stdin must be a pipe's read end, stdout and stderr write ends")


def connect(path: str) -> socket.socket:
    """A blocking connection to the Unix socket ``path``, however long the path is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(path.encode()) < 100:
            sock.connect(path)
        else:  # past sun_path's limit: go through a descriptor of the directory
            directory, name = os.path.split(path)
            dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{dirfd}/{name}")
            finally:
                os.close(dirfd)
    except BaseException:
        sock.close()
        raise
    return sock
