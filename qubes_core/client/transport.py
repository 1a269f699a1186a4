"""One call over the qubesd socket, and the reply turned back into a value or exception.

Exception replies become the exception type of the same name from
:mod:`qubes_core.exc` (``QubesVMNotFoundError``, ``QubesValueError``, ...), so a
caller catches the same types in-process and over the API. A type this client
does not know becomes :class:`qubes_core.exc.QubesException`.
"""

from __future__ import annotations

# The C module under socket: socket.py adds file objects and enum tables that Unix
# stream calls do not need, and loading it (with selectors) would cost every tool
# about 2 ms of its start-up, most of a tool's cost.
import _socket

from qubes_core import exc, protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing: every tool loads this
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

RECV_SIZE = 65536


class QubesDaemonNoResponseError(exc.QubesException):
    """qubesd closed the connection without a reply (refused, or a malformed request)."""


class QubesDaemonCommunicationError(exc.QubesException):
    """qubesd could not be reached or sent something that is not a reply."""


def exception_from_reply(reply: protocol.ExceptionReply) -> BaseException:
    """The exception object an exception reply stands for."""
    cls = getattr(exc, reply.type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = exc.QubesException
    # The constructors of the model's exceptions take model objects; build the
    # instance with the message alone.
    err = cls.__new__(cls)
    Exception.__init__(err, reply.message)
    err.remote_type = reply.type_name  # type: ignore[attr-defined]
    if reply.traceback:
        err.remote_traceback = reply.traceback  # type: ignore[attr-defined]
    return err


def parse_reply(data: bytes) -> bytes:
    """The body of a success reply; raise for an exception reply or no reply."""
    if not data:
        raise QubesDaemonNoResponseError(
            "qubesd closed the connection without a reply: the call was refused or "
            "malformed (see qubesd's log)")
    if data.startswith(protocol.OK):
        return data[2:]
    if data.startswith(protocol.EXCEPTION):
        raise exception_from_reply(protocol.parse_exception(data[2:]))
    raise QubesDaemonCommunicationError(f"unexpected reply from qubesd: {data[:20]!r}")


class Transport:
    """Calls on one qubesd socket, as one source domain (dom0 by default).

    ``start``, when given, is called the first time nothing listens on the socket (it
    starts a qubesd there), and the connection is tried again. No connection is made
    only to see whether one listens: qubesd would log each one as a malformed call.
    """

    def __init__(self, socket_path: str | Path, src: str = "dom0",
                 start: Callable[[], object] | None = None):
        self.socket_path = str(socket_path)
        self.src = src
        self.start = start
        self.calls = 0

    def _connect(self) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self.socket_path)
            return sock
        except OSError as err:
            sock.close()
            if self.start is None:
                raise QubesDaemonCommunicationError(
                    f"cannot connect to qubesd at {self.socket_path}: {err.strerror} (is "
                    "qubesd running for this installation?)") from None
        start, self.start = self.start, None  # only once
        start()
        return self._connect()

    def _send(self, method: str, dest: str, arg: str, payload: bytes) -> _socket.socket:
        sock = self._connect()
        try:
            sock.sendall(protocol.encode_request(method, self.src, dest, arg, payload))
            sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse early; read what it sent
        self.calls += 1
        return sock

    def raw_call(self, method: str, dest: str = "dom0", arg: str = "",
                 payload: bytes = b"") -> bytes:
        """The whole reply, header included."""
        sock = self._send(method, dest, arg, payload)
        chunks = []
        try:
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    break
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        return b"".join(chunks)

    def call(self, method: str, dest: str = "dom0", arg: str = "",
             payload: bytes | str = b"") -> bytes:
        """The body of the reply; exception replies are raised."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return parse_reply(self.raw_call(method, dest, arg, payload))

    def call_text(self, method: str, dest: str = "dom0", arg: str = "",
                  payload: bytes | str = b"") -> str:
        return self.call(method, dest, arg, payload).decode("utf-8")

    def events(self, dest: str = "dom0") -> Iterator[tuple[str, str, dict[str, str]]]:
        """``(subject, event, kwargs)`` from ``admin.Events`` until the generator is closed."""
        sock = self._send("admin.Events", dest, "", b"")
        buffer = bytearray()
        try:
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    parse_reply(bytes(buffer))  # an exception reply, or no reply
                    return
                buffer.extend(chunk)
                if buffer.startswith(protocol.EXCEPTION):
                    continue  # read it whole, then raise
                if len(buffer) >= 2 and not buffer.startswith(protocol.EVENT):
                    raise QubesDaemonCommunicationError("admin.Events: not an event stream")
                yield from protocol.split_events(buffer)
        finally:
            sock.close()
