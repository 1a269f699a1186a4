"""The qubesd wire protocol, byte for byte: the one definition the server and the clients share.

Request: ``METHOD[+ARG] SOURCE DEST-TYPE DEST\\0PAYLOAD`` then EOF, at most 64 KiB;
DEST-TYPE is ``name`` or ``keyword`` (only ``keyword adminvm``, which is dom0).
Replies: ``0\\0`` + body; ``2\\0`` + ``TYPE\\0TRACEBACK\\0MESSAGE\\0``; for each
event of ``admin.Events`` ``1\\0`` + ``SUBJECT\\0EVENT\\0K\\0V\\0...\\0\\0``.
Anything that cannot be framed gets no reply: the connection is closed.

It belongs to neither end: the server (:mod:`qubes_core.api`) and the clients
(:mod:`qubes_core.client`) both import it, and a client never loads the server's
package. It imports nothing at all: every command-line tool loads it, so its two
records are plain classes with slots (a ``typing.NamedTuple`` would load ``typing``
into every tool, a dataclass ``inspect`` too).
"""

from __future__ import annotations

MAX_REQUEST = 65536
OK = b"0\x00"
EVENT = b"1\x00"
EXCEPTION = b"2\x00"
ADMINVM_KEYWORD = "adminvm"


class FramingError(ValueError):
    """The bytes are not a request; the server closes the connection."""


class Request:
    """One framed call: method and argument, the calling VM, and the destination VM."""

    __slots__ = ("method", "arg", "src", "dest", "payload")

    def __init__(self, method: str, arg: str, src: str, dest: str, payload: bytes):
        self.method = method
        self.arg = arg
        self.src = src
        self.dest = dest
        self.payload = payload

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.arg!r}, {self.src!r}, {self.dest!r})"

    def encode(self) -> bytes:
        return encode_request(self.method, self.src, self.dest, self.arg, self.payload)


def _ascii_token(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise FramingError(f"{what} is not ASCII") from None
    if not text or not text.isprintable():
        raise FramingError(f"{what} is empty or holds control characters")
    return text


def parse_request(data: bytes) -> Request:
    """Split a whole request; raise FramingError when it cannot be framed."""
    if len(data) > MAX_REQUEST:
        raise FramingError("request longer than 64 KiB")
    header, sep, payload = data.partition(b"\x00")
    if not sep:
        raise FramingError("no NUL after the header")
    parts = header.split(b" ")
    if len(parts) != 4:
        raise FramingError("header must have 4 space-separated fields")
    meth_arg, src, dest_type, dest = parts
    method_raw, _, arg_raw = meth_arg.partition(b"+")
    method = _ascii_token(method_raw, "method")
    src_text = _ascii_token(src, "source")
    dest_text = _ascii_token(dest, "destination")
    if dest_type == b"keyword":
        if dest_text != ADMINVM_KEYWORD:
            raise FramingError(f"unknown destination keyword {dest_text!r}")
        dest_text = "dom0"
    elif dest_type != b"name":
        raise FramingError("destination type must be 'name' or 'keyword'")
    try:
        arg = arg_raw.decode("ascii")
    except UnicodeDecodeError:
        raise FramingError("argument is not ASCII") from None
    if not arg.isprintable():
        raise FramingError("argument holds control characters")
    return Request(method, arg, src_text, dest_text, payload)


def encode_request(method: str, src: str, dest: str, arg: str = "", payload: bytes = b""
                   ) -> bytes:
    """The bytes of one request (``dest`` ``dom0`` is sent as ``keyword adminvm``)."""
    meth_arg = method + ("+" + arg if arg else "")
    target = "keyword " + ADMINVM_KEYWORD if dest in ("dom0", "@adminvm") else "name " + dest
    return f"{meth_arg} {src} {target}".encode() + b"\x00" + payload


def encode_exception(type_name: str, message: str, traceback: str = "") -> bytes:
    """The reply to a refused call: the exception's class name lets a client raise the same."""
    return (EXCEPTION + type_name.encode("ascii") + b"\x00" + traceback.encode()
            + b"\x00" + message.encode("utf-8", "backslashreplace") + b"\x00")


def _event_field(text: str) -> bytes:
    # A NUL inside a field would break the framing: never send one.
    return text.encode("utf-8", "backslashreplace").replace(b"\x00", b"\\0")


def encode_event(subject: str, event: str, kwargs: dict[str, str]) -> bytes:
    """One ``admin.Events`` record: the VM (empty for the app), event name, then key/value pairs."""
    fields = [subject, event]
    for key, value in kwargs.items():
        fields.extend((key, value))
    return EVENT + b"".join(_event_field(f) + b"\x00" for f in fields) + b"\x00"


class ExceptionReply:
    """A refusal as a client reads it, before it is turned back into a Qubes exception."""

    __slots__ = ("type_name", "traceback", "message")

    def __init__(self, type_name: str, traceback: str, message: str):
        self.type_name = type_name
        self.traceback = traceback
        self.message = message


def parse_exception(body: bytes) -> ExceptionReply:
    """Parse what follows ``2\\0`` in an exception reply."""
    parts = body.split(b"\x00")
    if len(parts) < 3:
        raise FramingError("truncated exception reply")
    return ExceptionReply(parts[0].decode("ascii", "replace"),
                          parts[1].decode("utf-8", "replace"),
                          parts[2].decode("utf-8", "replace"))


def split_events(buffer: bytearray) -> list[tuple[str, str, dict[str, str]]]:
    """Take the complete events off the front of ``buffer`` (which must start with one)."""
    events: list[tuple[str, str, dict[str, str]]] = []
    while True:
        end = buffer.find(b"\x00\x00", 2)
        # The record ends with an empty field: find NUL NUL at a field boundary.
        while end != -1 and not _is_record_end(buffer, end):
            end = buffer.find(b"\x00\x00", end + 1)
        if end == -1:
            return events
        record = bytes(buffer[:end + 2])
        del buffer[:end + 2]
        if not record.startswith(EVENT):
            raise FramingError("expected an event record")
        fields = [f.decode("utf-8", "replace") for f in record[2:-2].split(b"\x00")]
        if len(fields) < 2 or len(fields) % 2:
            raise FramingError("malformed event record")
        subject, event = fields[0], fields[1]
        kwargs = dict(zip(fields[2::2], fields[3::2], strict=True))
        events.append((subject, event, kwargs))


def _is_record_end(buffer: bytearray, nul_pos: int) -> bool:
    # Fields after the 2-byte header are NUL-terminated; the record ends with an
    # extra NUL. Count the NULs from the header to nul_pos: the terminating NUL
    # pair is where the field count so far is even (subject, event, k, v, ...).
    fields = buffer.count(b"\x00", 2, nul_pos + 1)
    return fields >= 2 and fields % 2 == 0
