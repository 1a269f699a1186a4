"""Rules: validation of each field, the API and QubesDB text forms, firewall.xml."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qubes_core.firewall import Rule, RuleError, parse_api_rules
from qubes_core.firewall.rules import COMMENT_RE, MAX_COMMENT
from qubes_core.firewall.xmlfile import FirewallFileError, parse, serialize

# --- strategies of valid rules -------------------------------------------------------

ipv4_nets = st.builds(
    lambda addr, prefix: str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False)),
    st.ip_addresses(v=4), st.integers(0, 32))
ipv6_nets = st.builds(
    lambda addr, prefix: str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False)),
    st.ip_addresses(v=6), st.integers(0, 128))
host_names = st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
                      min_size=1, max_size=4).map(lambda labels: ".".join(labels + ["org"]))
comments = st.text(alphabet=st.sampled_from(
    "abcXYZ019 _.,:;!?()[]@#%+=/*'-"), max_size=40).filter(lambda c: c.strip() == c and c)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
    special = draw(st.sampled_from([None, "dns"]))
    dsthost = None if special else draw(st.one_of(st.none(), ipv4_nets, ipv6_nets, host_names))
    dstports = None
    if proto in ("tcp", "udp"):
        low = draw(st.integers(1, 65535))
        dstports = draw(st.one_of(st.none(), st.just((low, draw(st.integers(low, 65535))))))
    icmptype = draw(st.one_of(st.none(), st.integers(0, 255))) if proto == "icmp" else None
    return Rule(action=draw(st.sampled_from(["accept", "drop"])), proto=proto, dsthost=dsthost,
                dstports=dstports, icmptype=icmptype, specialtarget=special,
                expire=draw(st.one_of(st.none(), st.integers(1, 2**33))),
                comment=draw(st.one_of(st.none(), comments)))


@given(rules())
def test_api_text_round_trips(rule: Rule) -> None:
    text = rule.api_text()
    assert "\n" not in text
    assert Rule.from_api(text) == rule
    if rule.comment is not None:
        assert text.endswith(" comment=" + rule.comment)


@given(st.lists(rules(), max_size=8))
def test_firewall_xml_round_trips(rule_list: list[Rule]) -> None:
    assert parse(serialize(rule_list)) == rule_list


@given(rules())
def test_qdb_text_has_no_expire_nor_comment(rule: Rule) -> None:
    text = rule.qdb_text()
    assert "expire=" not in text and "comment=" not in text
    assert text.startswith("action=" + rule.action)


def test_api_text_canonical_forms() -> None:
    rule = Rule.from_api("dstports=443 proto=tcp action=accept dsthost=192.168.1.7 "
                         "comment=web: allowed (for now)")
    assert rule.api_text() == ("action=accept proto=tcp dsthost=192.168.1.7/32 "
                               "dstports=443-443 comment=web: allowed (for now)")
    assert rule.qdb_text() == "action=accept proto=tcp dst4=192.168.1.7/32 dstports=443-443"
    six = Rule.from_api("action=drop dst6=2001:db8::/32 proto=icmp icmptype=128")
    assert six.api_text() == "action=drop proto=icmp dsthost=2001:db8::/32 icmptype=128"
    assert six.qdb_text() == "action=drop proto=icmp dst6=2001:db8::/32 icmptype=128"
    name = Rule.from_api("action=accept dsthost=Mirror.Example.ORG")
    assert name.qdb_text() == "action=accept dsthost=mirror.example.org"
    assert Rule.from_api("action=accept specialtarget=dns").qdb_text() == (
        "action=accept specialtarget=dns")


def test_relative_expire_is_made_absolute() -> None:
    rule = Rule.from_api("action=accept expire=+300", now=1_000_000.7)
    assert rule.expire == 1_000_300
    assert rule.api_text() == "action=accept expire=1000300"
    with pytest.raises(RuleError, match="needs the current time"):
        Rule.from_api("action=accept expire=+300")


@pytest.mark.parametrize(("line", "field", "words"), [
    ("", "action", "missing"),
    ("proto=tcp", "action", "missing"),
    ("action=allow", "action", "not one of accept, drop"),
    ("action=ACCEPT", "action", "not one of"),
    ("action=accept proto=sctp", "proto", "not one of tcp, udp, icmp"),
    ("action=accept dstports=80", "dstports", "only valid with proto=tcp"),
    ("action=accept proto=icmp dstports=80", "dstports", "only valid with proto=tcp"),
    ("action=accept proto=tcp dstports=0", "dstports", "not a port"),
    ("action=accept proto=tcp dstports=65536", "dstports", "not a port"),
    ("action=accept proto=tcp dstports=90-80", "dstports", "empty"),
    ("action=accept proto=tcp dstports=-80", "dstports", "not a port"),
    ("action=accept proto=tcp dstports=80-", "dstports", "not a port"),
    ("action=accept proto=tcp dstports=http", "dstports", "not a port"),
    ("action=accept proto=tcp icmptype=8", "icmptype", "only valid with proto=icmp"),
    ("action=accept proto=icmp icmptype=256", "icmptype", "not an ICMP type"),
    ("action=accept proto=icmp icmptype=-1", "icmptype", "not an ICMP type"),
    ("action=accept dsthost=10.0.0.1/8", "dsthost", "host bits set (did you mean 10.0.0.0/8"),
    ("action=accept dsthost=10.0.0.0/33", "dsthost", "not an IPv4 or IPv6"),
    ("action=accept dsthost=10.0.0", "dsthost", "not an IPv4 or IPv6"),
    ("action=accept dsthost=010.0.0.1", "dsthost", "not an IPv4 or IPv6"),
    # A zone id names an interface of dom0's own, not a destination.
    ("action=accept dsthost=fe80::1%eth0", "dsthost", "not an IPv4 or IPv6"),
    ("action=accept dsthost=fe80::%1/64", "dsthost", "not an IPv4 or IPv6"),
    ("action=accept dst6=fe80::1%25eth0", "dst6", "not an IPv4 or IPv6"),
    ("action=accept dsthost=bad_name.org", "dsthost", "host name"),
    ("action=accept dsthost=-bad.org", "dsthost", "host name"),
    ("action=accept dsthost=a..b", "dsthost", "host name"),
    ("action=accept dsthost=" + "a" * 64 + ".org", "dsthost", "host name"),
    ("action=accept dst4=2001:db8::1", "dst4", "not an IPv4 address"),
    ("action=accept dst6=10.0.0.1", "dst6", "not an IPv6 address"),
    ("action=accept dst4=example.org", "dst4", "not an IPv4 address"),
    ("action=accept specialtarget=ntp", "specialtarget", "not one of dns"),
    ("action=accept specialtarget=dns dsthost=1.1.1.1", "specialtarget", "cannot be combined"),
    ("action=accept expire=soon", "expire", "not a time"),
    ("action=accept expire=99999999999999", "expire", "not a time"),
    ("action=accept comment=rm $(x)", "comment", "'$'"),
    ("action=accept comment=<b>", "comment", "'<>'"),
    ("action=accept comment=" + "x" * (MAX_COMMENT + 1), "comment", "longer than"),
    ("action=accept proto=tcp comment=a\\b", "comment", "'\\\\'"),
    ("action=acceptcomment=x", "comment", "separate option"),
    ("action=accept action=drop", "action", "more than once"),
    ("action=accept dsthost=1.1.1.1 dst4=2.2.2.2", "dsthost", "more than once"),
    ("action=accept color=red", "color", "unknown rule field"),
    ("action=accept proto", None, "not key=value"),
    ("action=accept\tproto=tcp", None, "printable ASCII"),
    ("action=accept comment=caf\u00e9", None, "printable ASCII"),
])
def test_invalid_rule_names_the_field(line: str, field: str | None, words: str) -> None:
    with pytest.raises(RuleError) as info:
        Rule.from_api(line)
    assert info.value.field == field
    assert words in str(info.value)
    if field:
        assert str(info.value).startswith(field + ":")


def test_keyword_construction_is_validated_too() -> None:
    with pytest.raises(RuleError, match="dstports"):
        Rule(action="accept", proto="udp", dstports=(53, 52))
    with pytest.raises(RuleError, match="icmptype: True"):
        Rule(action="accept", proto="icmp", icmptype=True)
    with pytest.raises(RuleError, match="action: expected text"):
        Rule(action=None)  # type: ignore[arg-type]


def test_comment_charset_is_safe() -> None:
    for char in "\"\\$`<>&|{}~^\n\r\x00":
        assert not COMMENT_RE.fullmatch(char), char
    assert Rule(action="accept", comment="").comment is None
    with pytest.raises(RuleError, match="comment"):
        Rule(action="accept", comment="trailing newline\n")


def test_parse_api_rules_names_the_line() -> None:
    text = "action=accept proto=tcp dstports=22\naction=drop proto=udp dstports=99999\n"
    with pytest.raises(RuleError) as info:
        parse_api_rules(text)
    assert str(info.value).startswith("rule 2: dstports:")
    assert info.value.field == "dstports"
    assert parse_api_rules("") == []
    assert len(parse_api_rules("action=drop\naction=accept\n")) == 2


def test_firewall_xml_shape_and_bad_files() -> None:
    data = serialize([Rule.from_api("action=accept proto=tcp dstports=80")])
    text = data.decode()
    assert '<firewall version="2">' in text
    assert '<property name="dstports">80-80</property>' in text
    with pytest.raises(FirewallFileError, match="not well-formed"):
        parse(b"<firewall version='2'><rules>")
    with pytest.raises(FirewallFileError, match="not a version 2"):
        parse(b"<QubesFirewallRules policy='allow'/>")
    bad = (b"<firewall version='2'><rules><rule><properties>"
           b"<property name='action'>accept</property></properties></rule><rule><properties>"
           b"<property name='action'>maybe</property></properties></rule></rules></firewall>")
    with pytest.raises(FirewallFileError, match=r"x.xml: rule 2: action: 'maybe'"):
        parse(bad, "x.xml")
    entity = (b"<!DOCTYPE f [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><firewall version='2'>"
              b"<rules><rule><properties><property name='action'>&e;</property></properties>"
              b"</rule></rules></firewall>")
    with pytest.raises(FirewallFileError, match="action"):
        parse(entity)
