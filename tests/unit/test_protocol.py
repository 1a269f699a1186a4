"""The wire format, byte for byte."""

from __future__ import annotations

import pytest

from qubes_core import protocol
from qubes_core.protocol import FramingError, parse_request


def test_parse_request_with_argument_and_payload():
    request = parse_request(b"admin.vm.property.Set+netvm dom0 name work\x00sys-net")
    assert (request.method, request.arg, request.src, request.dest, request.payload) == (
        "admin.vm.property.Set", "netvm", "dom0", "work", b"sys-net")


def test_keyword_adminvm_is_dom0():
    request = parse_request(b"admin.vm.List dom0 keyword adminvm\x00")
    assert request.dest == "dom0" and request.arg == "" and request.payload == b""


def test_argument_may_contain_plus():
    request = parse_request(b"admin.vm.device.pci.Assign+dom0+00_1f.2 dom0 name work\x00")
    assert request.arg == "dom0+00_1f.2"


@pytest.mark.parametrize("data", [
    b"admin.vm.List dom0 keyword adminvm",          # no NUL
    b"admin.vm.List dom0 adminvm\x00",              # 3 fields
    b"admin.vm.List  dom0 name work\x00",           # empty field
    b"admin.vm.List dom0 keyword sys-net\x00",      # unknown keyword
    b"admin.vm.List dom0 uuid work\x00",            # unknown dest type
    b"admin.vm.L\xffist dom0 name work\x00",        # not ASCII
    b"admin.vm.List+a\x01b dom0 name work\x00",     # control character in argument
    b"admin.vm.List+\xc3\xa9 dom0 name work\x00",   # non-ASCII argument
    b"",
    b"\x00",
    b"x" * (protocol.MAX_REQUEST + 1),
])
def test_unframeable_requests(data):
    with pytest.raises(FramingError):
        parse_request(data)


def test_encode_request_roundtrip():
    data = protocol.encode_request("admin.vm.feature.Set", "dom0", "work", "gui", b"1")
    assert data == b"admin.vm.feature.Set+gui dom0 name work\x001"
    assert protocol.encode_request("admin.vm.List", "dom0", "dom0") == (
        b"admin.vm.List dom0 keyword adminvm\x00")
    request = parse_request(data)
    assert request.encode() == data


def test_exception_reply_bytes():
    data = protocol.encode_exception("QubesVMNotFoundError", "No such domain: 'x'")
    assert data == b"2\x00QubesVMNotFoundError\x00\x00No such domain: 'x'\x00"
    reply = protocol.parse_exception(data[2:])
    assert (reply.type_name, reply.traceback, reply.message) == (
        "QubesVMNotFoundError", "", "No such domain: 'x'")


def test_event_record_bytes_and_split():
    first = protocol.encode_event("", "connection-established", {})
    assert first == b"1\x00\x00connection-established\x00\x00"
    second = protocol.encode_event("work", "property-set:netvm",
                                   {"name": "netvm", "newvalue": "", "oldvalue": "sys-net"})
    assert second == (b"1\x00work\x00property-set:netvm\x00name\x00netvm\x00newvalue\x00\x00"
                      b"oldvalue\x00sys-net\x00\x00")
    buffer = bytearray(first + second + second[:7])
    events = protocol.split_events(buffer)
    assert events == [
        ("", "connection-established", {}),
        ("work", "property-set:netvm", {"name": "netvm", "newvalue": "",
                                        "oldvalue": "sys-net"}),
    ]
    assert bytes(buffer) == second[:7]  # the incomplete record stays


def test_event_fields_never_carry_nul():
    record = protocol.encode_event("work", "x", {"k": "a\x00b"})
    assert protocol.split_events(bytearray(record)) == [("work", "x", {"k": "a\\0b"})]


def test_clients_load_the_protocol_without_the_server() -> None:
    """The wire protocol is neutral ground: the client tools never import the server."""
    import subprocess
    import sys

    code = ("import sys, qubes_core.client.app, qubes_core.client.query, "
            "qubes_core.client.transport;"
            "print(sorted(m for m in sys.modules if m.startswith('qubes_core.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "'qubes_core.protocol'" in out
    assert "qubes_core.api" not in out
