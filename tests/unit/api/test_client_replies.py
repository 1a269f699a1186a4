"""Replies turned back into values and exceptions by the client."""

from __future__ import annotations

import pytest

from qubes_core import exc, protocol
from qubes_core.client.app import PropertyValues, parse_vm_line
from qubes_core.client.transport import QubesDaemonNoResponseError, parse_reply


def test_success_body():
    assert parse_reply(b"0\x00hello") == b"hello"
    assert parse_reply(b"0\x00") == b""


@pytest.mark.parametrize("name, cls", [
    ("QubesVMNotFoundError", exc.QubesVMNotFoundError),
    ("QubesNoSuchPropertyError", exc.QubesNoSuchPropertyError),
    ("QubesPropertyValueError", exc.QubesPropertyValueError),
    ("QubesFeatureNotFoundError", exc.QubesFeatureNotFoundError),
    ("ProtocolError", exc.ProtocolError),
    ("SomethingUnknown", exc.QubesException),
])
def test_exception_types_map_back(name, cls):
    with pytest.raises(cls) as info:
        parse_reply(protocol.encode_exception(name, "the message"))
    assert str(info.value) == "the message"
    assert info.value.remote_type == name


def test_lookup_errors_stay_lookup_errors():
    with pytest.raises(KeyError):
        parse_reply(protocol.encode_exception("QubesVMNotFoundError", "No such domain"))
    with pytest.raises(AttributeError):
        parse_reply(protocol.encode_exception("QubesNoSuchPropertyError", "no"))


def test_no_reply():
    with pytest.raises(QubesDaemonNoResponseError):
        parse_reply(b"")


def test_property_line_types():
    class FakeDomains:
        def get_blind(self, name):
            return ("vm", name)

    class FakeApp:
        domains = FakeDomains()

    app = FakeApp()
    assert PropertyValues.parse(app, "default=False type=int 400", False) == (False, 400)
    assert PropertyValues.parse(app, "default=True type=bool True", False) == (True, True)
    assert PropertyValues.parse(app, "default=True type=vm ", False) == (True, None)
    assert PropertyValues.parse(app, "default=True type=vm sys-net", False) == (
        True, ("vm", "sys-net"))
    assert PropertyValues.parse(app, "default=False type=str a b\\nc", True) == (
        False, "a b\nc")
    assert PropertyValues.parse(app, "default=True type=str ", False) == (True, "")
    with pytest.raises(exc.QubesException, match="malformed"):
        PropertyValues.parse(app, "garbage", False)


def test_vm_line():
    assert parse_vm_line("work class=AppVM state=Halted uuid=x") == ("work", "AppVM",
                                                                     "Halted")
