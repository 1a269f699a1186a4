"""A VM's firewall: defaults, firewall.xml on disk, Set semantics, DispVM inheritance."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from qubes_core.app import Qubes
from qubes_core.firewall import (
    POLICY,
    FirewallFileError,
    Rule,
    RuleError,
    default_rules,
    parse_api_rules,
)
from qubes_core.firewall.xmlfile import parse
from qubes_core.labels import default_labels


def test_defaults_without_file(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    assert work.firewall.rules == default_rules() == [Rule(action="accept")]
    assert work.firewall.policy == POLICY == "drop"
    assert work.firewall.api_text() == "action=accept\n"
    assert not work.firewall.has_file()
    assert work.firewall.qdb_entries() == {"policy": "drop", "0000": "action=accept"}


def test_set_writes_file_atomically_and_reloads(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    rules = parse_api_rules("action=accept proto=tcp dsthost=10.1.0.0/16 dstports=443\n"
                            "action=accept specialtarget=dns comment=name service\n"
                            "action=drop\n")
    work.firewall.set_rules(rules)
    path = work.dir_path / "firewall.xml"
    assert path.exists()
    assert oct(path.stat().st_mode & 0o777) == "0o664"
    assert parse(path.read_bytes()) == rules
    assert [name for name in os.listdir(work.dir_path) if name.startswith(".")] == []
    # A new app (as after a qubesd restart) reads the same rules back.
    net_app.close()
    with Qubes(net_app.store.path) as again:
        assert again.domains["work"].firewall.rules == rules


def test_set_validates_everything_before_changing(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    good = parse_api_rules("action=accept proto=udp dstports=53\naction=drop\n")
    work.firewall.set_rules(good)
    before = (work.dir_path / "firewall.xml").read_bytes()
    with pytest.raises(RuleError, match="rule 3: icmptype"):
        work.firewall.set_rules(parse_api_rules(
            "action=drop\naction=accept\naction=accept proto=tcp icmptype=3\n"))
    with pytest.raises(RuleError, match="rule 2 is not a Rule"):
        work.firewall.set_rules([Rule(action="drop"), "action=accept"])  # type: ignore[list-item]
    with pytest.raises(RuleError, match="at most 10000"):
        work.firewall.set_rules([Rule(action="drop")] * 10001)
    assert work.firewall.rules == good
    assert (work.dir_path / "firewall.xml").read_bytes() == before


def test_expired_rules_are_not_in_force_and_dropped_on_save(net_app: Qubes, clock) -> None:
    work = net_app.domains["work"]
    now = int(clock.time())
    work.firewall.set_rules(parse_api_rules(
        f"action=accept proto=tcp dstports=22 expire={now + 60}\n"
        f"action=accept proto=tcp dstports=80 expire={now - 1}\n"
        "action=drop\n"))
    # The already expired rule is never written.
    assert len(parse((work.dir_path / "firewall.xml").read_bytes())) == 2
    assert work.firewall.nearest_expiry() == now + 60
    clock.advance(60)
    assert work.firewall.rules == [Rule(action="drop")]
    assert work.firewall.qdb_entries() == {"policy": "drop", "0000": "action=drop"}
    gone = work.firewall.drop_expired()
    assert [rule.dstports for rule in gone] == [(22, 22)]
    assert parse((work.dir_path / "firewall.xml").read_bytes()) == [Rule(action="drop")]
    assert work.firewall.drop_expired() == []


def test_expired_rules_dropped_when_read(net_app: Qubes, clock) -> None:
    work = net_app.domains["work"]
    now = int(clock.time())
    work.firewall.set_rules(parse_api_rules(f"action=accept expire={now + 5}\naction=drop\n"))
    clock.advance(10)
    work.firewall.load()
    assert work.firewall.rules == [Rule(action="drop")]
    # The file still has it: the schedule is told to remove it now.
    assert work.firewall.nearest_expiry() == 0
    assert work.firewall.drop_expired() == []
    assert parse((work.dir_path / "firewall.xml").read_bytes()) == [Rule(action="drop")]
    assert work.firewall.nearest_expiry() is None


def test_broken_file_blocks_everything(net_app: Qubes, caplog) -> None:
    work = net_app.domains["work"]
    work.dir_path.mkdir(parents=True, exist_ok=True)
    (work.dir_path / "firewall.xml").write_text(
        "<firewall version='2'><rules><rule><properties>"
        "<property name='action'>accept</property><property name='dsthost'>nope_</property>"
        "</properties></rule></rules></firewall>")
    with pytest.raises(FirewallFileError, match="rule 1: dsthost"):
        _ = work.firewall.rules
    assert work.firewall.qdb_entries() == {"policy": "drop"}
    assert "blocks all traffic" in caplog.text
    # Set replaces the broken file.
    work.firewall.set_rules([Rule(action="drop")])
    assert work.firewall.rules == [Rule(action="drop")]


def test_address_family_filter(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    work.firewall.set_rules(parse_api_rules(
        "action=accept dsthost=10.0.0.0/8\naction=accept dsthost=fd00::/8\n"
        "action=accept dsthost=example.org\naction=drop\n"))
    assert work.firewall.qdb_entries(address_family=4) == {
        "policy": "drop", "0000": "action=accept dst4=10.0.0.0/8",
        "0001": "action=accept dsthost=example.org", "0002": "action=drop"}
    assert work.firewall.qdb_entries(address_family=6)["0000"] == "action=accept dst6=fd00::/8"
    assert len(work.firewall.qdb_entries()) == 5


def test_dispvm_inherits_firewall_of_its_appvm(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    work.template_for_dispvms = True
    rules = parse_api_rules("action=accept proto=tcp dstports=443 comment=https only\n"
                            "action=drop\n")
    work.firewall.set_rules(rules)
    disp = net_app.add_new_vm("DispVM", template=work)
    assert disp.firewall.rules == rules
    assert parse((disp.dir_path / "firewall.xml").read_bytes()) == rules
    # A copy: later changes of the AppVM do not reach the existing DispVM.
    work.firewall.set_rules([Rule(action="accept")])
    assert disp.firewall.rules == rules


def test_clone_takes_the_firewall_of_its_source(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    rules = parse_api_rules("action=accept dsthost=example.org\naction=drop\n")
    work.firewall.set_rules(rules)
    copy = net_app.clone_vm(work, "work-copy")
    assert copy.firewall.rules == rules
    assert parse((copy.dir_path / "firewall.xml").read_bytes()) == rules
    plain = net_app.clone_vm(net_app.domains["sys-firewall"], "fw-copy")
    assert not (plain.dir_path / "firewall.xml").exists()


def test_dispvm_of_appvm_with_broken_file_gets_no_access(net_app: Qubes) -> None:
    work = net_app.domains["work"]
    work.template_for_dispvms = True
    work.dir_path.mkdir(parents=True, exist_ok=True)
    (work.dir_path / "firewall.xml").write_text("<firewall version='2'><rules>")
    disp = net_app.add_new_vm("DispVM", template=work)
    assert disp.firewall.rules == []
    assert disp.firewall.qdb_entries() == {"policy": "drop"}


def test_app_without_store_keeps_rules_in_memory() -> None:
    app = Qubes(None, load=False)
    app.labels = default_labels()
    vm = app.add_new_vm("AppVM", name="mem", label="red")
    assert vm.firewall.path is None
    vm.firewall.set_rules([Rule(action="drop")])
    assert vm.firewall.rules == [Rule(action="drop")]


async def test_qubesd_reads_and_writes_firewall_xml_off_the_loop(
        net_app: Qubes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set, Reload and expiry (the ``*_async`` methods) leave the disk to a worker thread,
    one write at a time, and re-export once the file is written."""
    from qubes_core.firewall import vmfirewall

    work = net_app.domains["work"]
    loop_thread = threading.current_thread()
    touched_in: list[threading.Thread] = []
    real_write, real_parse = vmfirewall.write_atomic, vmfirewall.parse

    def write_atomic(path, data):
        touched_in.append(threading.current_thread())
        real_write(path, data)

    def parse_file(data, where="firewall.xml"):
        touched_in.append(threading.current_thread())
        return real_parse(data, where)

    monkeypatch.setattr(vmfirewall, "write_atomic", write_atomic)
    monkeypatch.setattr(vmfirewall, "parse", parse_file)
    changed = []
    work.add_handler("firewall-changed", lambda vm, event, **kw: changed.append(
        parse((vm.dir_path / "firewall.xml").read_bytes())))
    rules = parse_api_rules("action=accept proto=tcp dstports=22\naction=drop\n")
    await asyncio.gather(work.firewall.set_rules_async(rules[:1]),
                         work.firewall.set_rules_async(rules))
    await work.firewall.reload_async()
    assert touched_in and loop_thread not in touched_in
    assert changed == [rules[:1], rules, rules]  # each event sees its own write, in order
    assert parse((work.dir_path / "firewall.xml").read_bytes()) == rules
