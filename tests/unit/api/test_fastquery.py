"""qubesd-query-fast: arguments, request header, reply handling, and that it stands alone."""

from __future__ import annotations

import io

import pytest

from qubes_core import protocol
from qubes_core.client import fastquery


def test_arguments_like_qubesd_query():
    assert fastquery.parse_args(["-e", "dom0", "admin.vm.List", "dom0"]) == (
        None, True, False, "dom0", "admin.vm.List", "dom0", "")
    assert fastquery.parse_args(["-c", "/s", "--fail", "dom0", "admin.vm.property.Get",
                                 "work", "label"]) == (
        "/s", False, True, "dom0", "admin.vm.property.Get", "work", "label")


@pytest.mark.parametrize("argv", [[], ["dom0", "m"], ["-x", "dom0", "m", "d"],
                                  ["a", "b", "c", "d", "e"]])
def test_usage_errors(argv):
    assert fastquery.parse_args(argv) is None


def test_header_is_the_wire_format():
    for dest, arg in (("dom0", ""), ("work", "label"), ("@adminvm", "x")):
        header = fastquery.request_header("dom0", "admin.vm.property.Get", dest, arg)
        assert header + b"\0" == protocol.encode_request(
            "admin.vm.property.Get", "dom0", dest, arg)


def replay(*chunks: bytes):
    """A ``recv`` that returns the given chunks, then end of stream."""
    pending = list(chunks)
    return lambda size: pending.pop(0) if pending else b""


@pytest.mark.parametrize("chunks", [(b"0\x00body",), (b"0", b"\x00bo", b"dy")])
def test_success_reply(chunks):
    out, err = io.BytesIO(), io.StringIO()
    assert fastquery.copy_reply(replay(*chunks), True, out, err) == 0
    assert out.getvalue() == b"body" and not err.getvalue()
    out = io.BytesIO()
    assert fastquery.copy_reply(replay(*chunks), False, out, err) == 0
    assert out.getvalue() == b"0\x00body"


def test_exception_reply():
    reply = protocol.encode_exception("QubesVMNotFoundError", "No such domain: 'x'")
    out, err = io.BytesIO(), io.StringIO()
    assert fastquery.copy_reply(replay(reply[:5], reply[5:]), True, out, err) == 1
    assert err.getvalue() == "QubesVMNotFoundError: No such domain: 'x'\n"
    assert out.getvalue() == b""
    assert fastquery.copy_reply(replay(reply), False, out, err) == 0
    assert out.getvalue() == reply


def test_event_stream_is_copied_as_it_comes():
    first = protocol.encode_event("", "connection-established", {})
    second = protocol.encode_event("vm1", "domain-tag-add:t", {"tag": "t"})
    out, err = io.BytesIO(), io.StringIO()
    assert fastquery.copy_reply(replay(first, second), True, out, err) == 0
    assert out.getvalue() == first + second


def test_no_reply():
    err = io.StringIO()
    assert fastquery.copy_reply(replay(), True, io.BytesIO(), err) == 2
    assert "no reply" in err.getvalue()


def test_socket_path_follows_base_dir(monkeypatch, tmp_path):
    from qubes_core import paths

    monkeypatch.setenv("QUBES_BASE_DIR", str(tmp_path))
    # The fast client may not import the project: it must agree with paths.py anyway.
    assert fastquery.socket_path(None) == str(paths.resolve().admin_socket)
    assert fastquery.socket_path(None) == str(tmp_path / "run" / "qubesd.sock")
    assert fastquery.socket_path("/explicit") == "/explicit"
    monkeypatch.delenv("QUBES_BASE_DIR")
    assert fastquery.socket_path(None) == str(paths.resolve().admin_socket)
