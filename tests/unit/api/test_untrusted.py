"""Checks of untrusted text."""

from __future__ import annotations

import pytest

from qubes_core import exc
from qubes_core.api.untrusted import decode_text, escape_line_value, parse_key_values
from qubes_core.client.app import unescape_line_value


def test_decode_text_accepts_plain_utf8():
    assert decode_text("zażółć".encode(), "value") == "zażółć"


@pytest.mark.parametrize("raw, message", [
    (b"\xff", "not valid UTF-8"),
    (b"a\x00b", "control character"),
    (b"a\nb", "control character"),
    (b"\x7f", "control character"),
    ("\ufffe".encode(), "control character"),
    ("é".encode(), "ASCII"),
])
def test_decode_text_refuses(raw, message):
    with pytest.raises(exc.QubesValueError, match=message):
        decode_text(raw, "value", ascii_only=message == "ASCII")


def test_parse_key_values():
    assert parse_key_values("name=a label=red", "p", {"name", "label"}) == {
        "name": "a", "label": "red"}
    with pytest.raises(exc.QubesValueError, match="unknown key 'x'"):
        parse_key_values("x=1", "p", {"name"})
    with pytest.raises(exc.QubesValueError, match="given twice"):
        parse_key_values("name=a name=b", "p", {"name"})
    with pytest.raises(exc.QubesValueError, match="expected key=value"):
        parse_key_values("name", "p", {"name"})
    assert parse_key_values("pool:root=p", "p", {"pool"}, prefixes=("pool:",)) == {
        "pool:root": "p"}


@pytest.mark.parametrize("text", ["", "plain", "a\\b", "line1\nline2", "\\n", "x\\\n"])
def test_escape_roundtrip(text):
    escaped = escape_line_value(text)
    assert "\n" not in escaped
    assert unescape_line_value(escaped) == text
