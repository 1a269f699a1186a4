"""qubes.xml as Qubes R4.4 writes it: loaded, checked element by element, written back.

The fixtures in tests/fixtures/ are shaped as Qubes writes its files: domains sorted
by name (sys-firewall before its netvm sys-net), dom0 with only its label, device
assignments of every class with mode and identity, the linux-kernel pool.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.store import serialize
from tests.requirements import require, require_root, require_tool

FIXTURES = Path(__file__).parents[2] / "fixtures"
R44 = FIXTURES / "qubes-r44.xml"
ALL_FIXTURES = sorted(FIXTURES.glob("qubes-*.xml"))


@pytest.fixture
def r44(tmp_path: Path) -> Path:
    path = tmp_path / "qubes.xml"
    shutil.copy(R44, path)
    return path


def test_minimal_dom0_and_name_sorted_domains_load(r44):
    with Qubes(r44) as app:
        dom0 = app.domains[0]
        assert (dom0.name, dom0.qid, str(dom0.uuid)) == (
            "dom0", 0, "00000000-0000-0000-0000-000000000000")
        assert dom0.label.name == "black"
        firewall, net = app.domains["sys-firewall"], app.domains["sys-net"]
        assert firewall.netvm is net and net.netvm is None
        assert app.default_netvm is firewall
        assert app.domains["work"].netvm is firewall
        assert app.default_pool_kernel == "linux-kernel"
        assert app.pools["varlibqubes"].config["ephemeral_volatile"] == "False"


def test_assignments_of_every_class_are_kept(r44):
    with Qubes(r44) as app:
        work = app.domains["work"]
        block = work.devices["block"].assignments()
        assert [(a.backend_domain, a.ident, a.mode, a.identity, a.options) for a in block] == [
            ("dom0", "loop7", "required", "*", {"read-only": "yes"}),
            ("sys-net", "xvdi", "auto-attach", "QEMU_HARDDISK_QM00001",
             {"frontend-dev": "xvdj"}),
        ]
        usb = work.devices["usb"].assignments()
        assert [(a.ident, a.mode, a.identity) for a in usb] == [
            ("2-1", "ask-to-attach", "0951:1666:0123456789AB:u080650")]
        pci = app.domains["sys-net"].devices["pci"].assignments()
        assert [(a.ident, a.identity) for a in pci] == [
            ("00_14.3", "0x8086:0x51f1::p028000"), ("00_1f.6", "*")]
        assert pci[0].options == {"no-strict-reset": "True"}


def test_meminfo_writer_off_becomes_maxmem_zero(r44):
    with Qubes(r44) as app:
        firewall = app.domains["sys-firewall"]
        assert firewall.maxmem == 0 and not firewall.property_is_default("maxmem")
        assert "service.meminfo-writer" not in firewall.features


def _canonical(data: bytes) -> bytes:
    parser = etree.XMLParser(remove_blank_text=True)
    return etree.tostring(etree.fromstring(data, parser), method="c14n")


def test_written_file_is_the_file_qubes_wrote(r44):
    """Apart from the migration Qubes itself applies at load, a load and a save give
    back the very file Qubes wrote."""
    expected = R44.read_bytes().replace(
        b'        <feature name="service.meminfo-writer"></feature>\n', b"").replace(
        b'<property name="label">green</property>\n',
        b'<property name="label">green</property>\n'
        b'        <property name="maxmem">0</property>\n')
    with Qubes(r44) as app:
        assert _canonical(serialize(app)) == _canonical(expected)


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_fixtures_round_trip(tmp_path, fixture):
    path = tmp_path / "qubes.xml"
    shutil.copy(fixture, path)
    with Qubes(path) as app:
        app.save()
        first = path.read_bytes()
    with Qubes(path) as app:
        assert serialize(app) == first


def test_written_shape_is_what_qubes_loads(r44):
    with Qubes(r44) as app:
        app.save()
    root = etree.parse(str(r44)).getroot()
    assert root.tag == "qubes" and root.get("version") is None
    names = [d.findtext("properties/property[@name='name']") or "dom0"
             for d in root.findall("domains/domain")]
    assert names == sorted(names)
    dom0 = root.find("domains/domain[@id='domain-0']")
    assert [p.get("name") for p in dom0.findall("properties/property")] == ["label"]
    pools = {p.get("name") for p in root.findall("pools/pool")}
    used = {v.get("pool") for v in root.iter("volume")}
    assert used <= pools
    assert root.findtext("properties/property[@name='default_pool_kernel']") in pools


def test_new_installation_writes_dom0_as_qubes_does(app):
    root = etree.parse(str(app.store.path)).getroot()
    dom0 = root.find("domains/domain[@id='domain-0']")
    assert [(p.get("name"), p.text) for p in dom0.findall("properties/property")] == [
        ("label", "black")]
    assert {p.get("name") for p in root.findall("pools/pool")} >= {"linux-kernel"}


def test_netvm_loop_in_file_refused_with_one_line(r44):
    text = R44.read_text().replace(
        '<property name="netvm"></property>\n        <property name="provides_network">',
        '<property name="netvm">sys-firewall</property>\n'
        '        <property name="provides_network">')
    assert text != R44.read_text()
    r44.write_text(text)
    with pytest.raises(exc.QubesStoreError) as info:
        Qubes(r44)
    message = str(info.value)
    assert "netvm loop" in message and "sys-net" in message and "\n" not in message


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BROKEN = {
    "nameless feature": ('<feature name="internal">1</feature>', "<feature>1</feature>",
                         "<feature>"),
    "nameless tag": ('<tag name="office"/>', "<tag/>", "<tag>"),
    "empty tag name": ('<tag name="office"/>', '<tag name=""/>', "<tag>"),
    "duplicate label id": ('id="label-2">orange', 'id="label-1">orange', 'label-1'),
    "duplicate label name": ('>orange</label>', ">red</label>", "'red'"),
    "label named dom0": ('>orange</label>', ">dom0</label>", "reserved"),
    "label named none": ('>orange</label>', ">none</label>", "reserved"),
    "bad label id": ('id="label-2"', 'id="label-x"', "label-N"),
    "volume without name": ('<volume name="private" pool="varlibqubes" revisions_to_keep="1" '
                            'rw="True" save_on_stop="True" size="10737418240"',
                            '<volume pool="varlibqubes" revisions_to_keep="1" rw="True" '
                            'save_on_stop="True" size="10737418240"', "<volume>"),
    "negative size": ('size="10737418240"', 'size="-1"', "size"),
    "unicode digits in size": ('size="10737418240"', 'size="١٢٣"', "size"),
    "bad bool": ('rw="True" save_on_stop="True" size="10737418240"',
                 'rw="maybe" save_on_stop="True" size="10737418240"', "rw"),
    "undeclared pool": ('pool="varlibqubes" revisions_to_keep="1" rw="True" save_on_stop="True"'
                        ' size="10737418240"',
                        'pool="nowhere" revisions_to_keep="1" rw="True" save_on_stop="True"'
                        ' size="10737418240"', "nowhere"),
    "nameless property": ('<property name="backup_timestamp">', "<property>",
                          "<property>"),
    "bad device mode": ('mode="ask-to-attach"', 'mode="always"', "mode"),
    "bad device id": ('id="loop7"', 'id="../../x"', "<device"),
    "nameless pool": ('name="linux-kernel"', "", "<pool>"),
    "domain id not qid": ('id="domain-6"', 'id="domain-9"', "qid"),
    "missing name": ('<property name="name">work</property>', "", 'name="name"'),
    "unicode digits in qid": ('<property name="qid">6</property>',
                              '<property name="qid">٦</property>', "qid"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_elements_refused_with_one_line_naming_them(r44, case):
    old, new, named = BROKEN[case]
    content = _replace(R44.read_text(), old, new)
    r44.write_text(content)
    with pytest.raises(exc.QubesStoreError) as info:
        Qubes(r44)
    message = str(info.value)
    assert named in message and "\n" not in message
    assert str(r44) in message
    assert r44.read_text() == content


def test_immutable_file_gives_one_line(r44):
    """``chattr +i`` (a real immutable file, as root on the test's own filesystem)."""
    require_root()
    require_tool("chattr")
    result = subprocess.run(["chattr", "+i", str(r44)], capture_output=True, text=True)
    require(result.returncode == 0, f"the filesystem of {r44} has no immutable flag: "
            f"{result.stderr.strip()}")
    try:
        with pytest.raises(exc.QubesStoreError) as info:
            Qubes(r44)
        assert "cannot be opened for writing" in str(info.value)
        assert "\n" not in str(info.value)
        with Qubes(r44, lock=False) as reader:  # reading it still works
            assert "work" in reader.domains
    finally:
        subprocess.run(["chattr", "-i", str(r44)], check=True)


def test_unopenable_file_gives_one_line(tmp_path):
    """A qubes.xml that cannot be opened for writing (here: a directory in its place,
    the same failure path as an immutable file) gives a one-line error, not a traceback."""
    path = tmp_path / "qubes.xml"
    path.mkdir()
    with pytest.raises(exc.QubesStoreError, match="cannot be opened for writing"):
        Qubes(path)


def test_old_gray_colour_migrated(r44):
    r44.write_text(_replace(R44.read_text(), '"0x555555"', '"0x555753"'))
    with Qubes(r44) as app:
        assert app.get_label("gray").color == "0x555555"


def test_disposable_template_that_is_none_unset_at_load(r44):
    r44.write_text(_replace(R44.read_text(),
                            '<property name="default_dispvm">debian-12-xfce-dvm</property>',
                            '<property name="default_dispvm">sys-net</property>'))
    with Qubes(r44) as app:
        assert app.default_dispvm is None and not app.property_is_default("default_dispvm")


def test_computed_properties_in_a_file_are_ignored(r44):
    """Values Qubes computes (never writes) do not stop a load when a file has them."""
    text = _replace(R44.read_text(), '<property name="qid">6</property>',
                    '<property name="qid">6</property>\n'
                    '        <property name="updateable">True</property>')
    text = _replace(text, '<property name="updatevm">sys-firewall</property>',
                    '<property name="updatevm">sys-firewall</property>\n'
                    '    <property name="no_cpus">512</property>')
    r44.write_text(text)
    with Qubes(r44) as app:
        assert app.domains["work"].updateable is False
        assert app.no_cpus != 512 and app.property_is_default("no_cpus")
        app.save()
    assert "updateable" not in r44.read_text() and "no_cpus" not in r44.read_text()
