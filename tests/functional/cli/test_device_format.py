"""qvm-device's reading and writing of Qubes 4.4's device lines.

The lines are Qubes R4.4's, given by a stand-in for qubesd: the qubesd of this tree
answers the device methods in the older format, which the tests against a real
qubesd (test_tools) cover.
"""

from __future__ import annotations

from qubes_core.cli.qvm_device import (
    DeviceApi,
    description,
    parse_line,
    parse_words,
    port_of,
    quote,
)


class FakeApp:
    """Answers the calls of one device class with canned 4.4 replies, recording requests."""

    def __init__(self, replies: dict[str, str]):
        self.replies = replies
        self.calls: list[tuple[str, str, str, str]] = []

    def call(self, method: str, dest: str, arg: str = "", payload: str = "") -> str:
        self.calls.append((method, dest, arg, payload))
        return self.replies.get(method.rsplit(".", 1)[-1], "")


def test_quoted_values_and_escapes():
    line = ("00_1f.2:0x8086:0x1234::p0c0330 device_id='0x8086:0x1234::p0c0330' "
            "port_id='00_1f.2' devclass='pci' backend_domain='dom0' "
            "product='USB \\'xHCI\\' controller' interfaces='p0c0330'")
    head, fields = parse_line(line)
    assert head == "00_1f.2:0x8086:0x1234::p0c0330"
    assert fields["product"] == "USB 'xHCI' controller"
    assert fields["port_id"] == "00_1f.2" and fields["backend_domain"] == "dom0"
    assert parse_words("a=plain b='two words'") == {"a": "plain", "b": "two words"}
    assert parse_words(f"v={quote(chr(92) + chr(39))}") == {"v": "\\'"}
    assert description(fields) == "USB 'xHCI' controller"


def test_heads_name_the_port():
    assert port_of("dom0+00_1f.2:0x8086:0x1234::p0c0330") == "dom0:00_1f.2"
    assert port_of("dom0+00_1f.2") == "dom0:00_1f.2"
    api = DeviceApi(FakeApp({"Available": "00_1f.2:abc port_id='00_1f.2'\n"}), "pci")
    assert api.available("dom0") == [("00_1f.2", {"port_id": "00_1f.2"})]


def test_assignment_request_in_the_44_form():
    app = FakeApp({"Attached": ""})
    api = DeviceApi(app, "pci")
    device = ("dom0", "00_1f.2", "*")
    assert api.assignment_arg("work", device) == "dom0+00_1f.2+_"
    payload = api.assignment_payload("work", device, "required", {"no-strict-reset": "True"})
    assert parse_words(payload) == {
        "device_id": "*", "port_id": "00_1f.2", "devclass": "pci", "backend_domain": "dom0",
        "mode": "required", "frontend_domain": "work", "_no-strict-reset": "True"}
    assert app.calls[0][0] == "admin.vm.device.pci.Attached"  # how the format is told
