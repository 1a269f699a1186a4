"""admin.vm.firewall.Get/Set/Reload through a real qubesd process and the Python client.

The qubesd child runs on the real clock, so the expiry tests use rules that expire
two seconds after they are set and wait (bounded) for them to go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.client.transport import Transport
from qubes_core.firewall import Rule
from qubes_core.firewall.xmlfile import parse
from tests.support import wait_until


class Qubesd:
    """One installation and the qubesd that serves it (restartable)."""

    def __init__(self, base: Path):
        self.base = base
        self.process: EmbeddedQubesd | None = None
        self.transport: Transport | None = None

    def start(self) -> None:
        process = EmbeddedQubesd.start(self.base, runtime="offline")
        assert process is not None, "another qubesd already serves this directory"
        self.process = process
        self.transport = Transport(process.socket_path)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def call(self, method: str, dest: str, payload: str | bytes = b"") -> str:
        assert self.transport is not None
        return self.transport.call_text(method, dest, "", payload)

    def firewall_file(self, vm: str) -> list[Rule]:
        return parse((self.base / "appvms" / vm / "firewall.xml").read_bytes())


@pytest.fixture
def qubesd(tmp_path: Path) -> Iterator[Qubesd]:
    base = tmp_path / "qubes"
    base.mkdir()
    with Qubes.create_empty_store(base / "qubes.xml", setup_check="auto") as app:
        template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
        app.default_template = template
        net = app.add_new_vm("AppVM", name="sys-net", label="red", provides_network=True,
                             netvm=None)
        app.default_netvm = net
        app.add_new_vm("AppVM", name="work", label="blue")
        app.save()
    daemon = Qubesd(base)
    daemon.start()
    yield daemon
    daemon.stop()


def test_get_set_reload_round_trip(qubesd: Qubesd) -> None:
    assert qubesd.call("admin.vm.firewall.Get", "work") == "action=accept\n"
    rules = ("action=accept proto=tcp dsthost=192.168.7.0/24 dstports=443-443 "
             "comment=intranet web\n"
             "action=accept specialtarget=dns\n"
             "action=accept proto=icmp icmptype=8\n"
             "action=drop\n")
    assert qubesd.call("admin.vm.firewall.Set", "work", rules) == ""
    assert qubesd.call("admin.vm.firewall.Get", "work") == rules
    assert len(qubesd.firewall_file("work")) == 4
    # Reload re-reads firewall.xml: an edit made on disk takes effect.
    path = qubesd.base / "appvms" / "work" / "firewall.xml"
    path.write_bytes(path.read_bytes().replace(b"192.168.7.0/24", b"192.168.8.0/24"))
    assert qubesd.call("admin.vm.firewall.Reload", "work") == ""
    assert "dsthost=192.168.8.0/24" in qubesd.call("admin.vm.firewall.Get", "work")
    # A new qubesd reads the same rules.
    qubesd.stop()
    qubesd.start()
    assert "dsthost=192.168.8.0/24" in qubesd.call("admin.vm.firewall.Get", "work")


@pytest.mark.parametrize(("payload", "words"), [
    ("action=accept\naction=accept proto=tcp dstports=99999\n", "rule 2: dstports"),
    ("action=accept\naction=maybe\n", "rule 2: action"),
    ("action=accept dsthost=10.0.0.1/8\n", "rule 1: dsthost"),
    ("action=accept comment=$(reboot)\n", "rule 1: comment"),
    ("action=accept\r\naction=drop\n", "rule 1: .*printable ASCII"),
    ("action=accept comment=caf\u00e9\n", "must be ASCII"),
])
def test_invalid_set_names_the_problem_and_changes_nothing(qubesd: Qubesd, payload: str,
                                                           words: str) -> None:
    qubesd.call("admin.vm.firewall.Set", "work", "action=drop proto=udp\naction=accept\n")
    before = (qubesd.base / "appvms" / "work" / "firewall.xml").read_bytes()
    with pytest.raises(exc.QubesValueError, match=words.replace("$", r"\$")):
        qubesd.call("admin.vm.firewall.Set", "work", payload)
    assert qubesd.call("admin.vm.firewall.Get", "work") == (
        "action=drop proto=udp\naction=accept\n")
    assert (qubesd.base / "appvms" / "work" / "firewall.xml").read_bytes() == before


def test_dom0_has_no_firewall(qubesd: Qubesd) -> None:
    with pytest.raises(exc.QubesVMError, match="dom0 has no firewall"):
        qubesd.call("admin.vm.firewall.Get", "dom0")


def test_rule_leaves_firewall_xml_when_it_expires(qubesd: Qubesd) -> None:
    qubesd.call("admin.vm.firewall.Set", "work",
                "action=accept proto=tcp dstports=22 expire=+2\naction=drop\n")
    text = qubesd.call("admin.vm.firewall.Get", "work")
    expire = int(text.split("expire=")[1].split()[0])
    assert expire - 3 <= time.time() <= expire
    wait_until(lambda: len(qubesd.firewall_file("work")) == 1, what="the rule expiring")
    removed = (qubesd.base / "appvms" / "work" / "firewall.xml").stat().st_mtime
    assert removed >= expire, "the rule left firewall.xml before its expiry"
    assert qubesd.call("admin.vm.firewall.Get", "work") == "action=drop\n"


def test_rule_that_expired_while_qubesd_was_down_is_removed_at_start(qubesd: Qubesd
                                                                      ) -> None:
    qubesd.call("admin.vm.firewall.Set", "work",
                "action=accept dsthost=10.1.0.0/16 expire=+1\n"
                "action=accept dsthost=10.2.0.0/16 expire=+3600\naction=drop\n")
    qubesd.stop()
    expire = qubesd.firewall_file("work")[0].expire
    assert expire is not None
    wait_until(lambda: time.time() >= expire, what="the rule's expiry")
    assert len(qubesd.firewall_file("work")) == 3  # nobody removed it while down
    qubesd.start()  # returns once qubesd is ready (after qubesd-start)
    assert [rule.dsthost for rule in qubesd.firewall_file("work")] == ["10.2.0.0/16", None]
    assert qubesd.call("admin.vm.firewall.Get", "work").startswith(
        "action=accept dsthost=10.2.0.0/16 expire=")
