"""qubes.xml: the R4 shape, round trips, bad files, locking."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.devices import DeviceAssignment
from qubes_core.store import serialize

FIXTURE = Path(__file__).parents[2] / "fixtures" / "qubes-r4.xml"


@pytest.fixture
def r4_store(tmp_path: Path) -> Path:
    path = tmp_path / "qubes.xml"
    shutil.copy(FIXTURE, path)
    return path


def test_reference_file_loads(r4_store, caplog):
    caplog.set_level(logging.WARNING)
    with Qubes(r4_store) as app:
        assert [vm.name for vm in app.domains] == [
            "dom0", "fedora-39", "sys-net", "sys-firewall", "work", "fedora-39-dvm",
            "default-mgmt-dvm", "win10", "disp4242"]
        assert sorted(app.pools) == ["linux-kernel", "varlibqubes", "vm-pool"]
        assert app.pools["vm-pool"].config["volume_group"] == "qubes_dom0"
        assert app.default_template.name == "fedora-39"
        assert app.default_netvm.name == "sys-firewall"
        assert app.clockvm.name == "sys-net"
        assert app.default_pool == "vm-pool"
        work, net = app.domains["work"], app.domains["sys-net"]
        assert work.netvm is app.domains["sys-firewall"]
        assert work.template.name == "fedora-39"
        assert work.default_dispvm is None
        assert work.backup_timestamp == 1700000000
        assert work.features["service.crond"] == ""
        assert list(work.tags) == ["audiovm-dom0", "created-by-dom0", "guivm-dom0", "office"]
        assert work.volume_config["private"]["size"] == 10737418240
        assert work.volume_config["private"]["save_on_stop"] is True
        assert net.maxmem == 0 and net.virt_mode == "hvm" and net.autostart is True
        pci = net.devices["pci"].assignments()
        assert [(d.backend_domain, d.ident) for d in pci] == [("dom0", "00_1f.6"),
                                                               ("dom0", "02_00.0")]
        assert pci[0].options == {"no-strict-reset": "True"}
        assert net.qdb.list() == []  # not running: nothing exported at load
        disp = app.domains["disp4242"]
        assert disp.template.name == "fedora-39-dvm" and disp.auto_cleanup
        assert app.domains["win10"].qrexec_timeout == 300
        assert app.domains["fedora-39"].kernel == "6.6.21-1.fc37"
        assert app.stats_interval == 3 and app.check_updates_vm is True
        assert app.domains["dom0"].keyboard_layout == "us++"
        assert app.domains["fedora-39"].installed_by_rpm is True
        assert app.domains["fedora-39"].unknown_properties["qrexec_installed"] == "True"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "qrexec_installed" in messages
    assert "usb" in app.domains["fedora-39"].devices  # every device class is kept


def _canonical(path: Path) -> bytes:
    return etree.tostring(etree.parse(str(path)), method="c14n")


def test_reference_file_round_trips(r4_store, tmp_path):
    with Qubes(r4_store) as app:
        app.save()
    with Qubes(r4_store) as app:
        first = serialize(app)
        app.save()
    with Qubes(r4_store) as app:
        assert serialize(app) == first
        assert app.domains["fedora-39"].unknown_properties["qrexec_installed"] == "True"


def test_model_round_trip_keeps_everything(basic_app, tmp_path):
    work = basic_app.domains["work"]
    work.features["service.cups"] = True
    work.tags.add("office")
    work.memory = 1000
    work.devices["pci"].assign(DeviceAssignment("dom0", "00_1f.2", {"permissive": "True"}))
    basic_app.add_label("pink", "0xff00ff")
    basic_app.save()
    before = serialize(basic_app)
    path = basic_app.store.path
    basic_app.close()
    with Qubes(path) as again:
        assert serialize(again) == before
        assert again.domains["work"].memory == 1000
        assert again.domains["work"].property_is_default("vcpus")
        assert again.get_label("pink").color == "0xff00ff"


def test_qubes_xml_shape(basic_app):
    basic_app.save()
    root = etree.parse(str(basic_app.store.path)).getroot()
    assert root.tag == "qubes" and root.get("version") is None
    assert root.find("labels/label").get("id") == "label-1"
    assert root.find("pools/pool[@name='varlibqubes']").get("driver") == "file-reflink"
    dom0 = root.find("domains/domain[@id='domain-0']")
    assert dom0.get("class") == "AdminVM"
    work = root.xpath("domains/domain[properties/property[@name='name']='work']")[0]
    assert work.get("class") == "AppVM"
    assert work.find("volume-config/volume[@name='private']").get("save_on_stop") == "True"
    net = root.xpath("domains/domain[properties/property[@name='name']='sys-net']")[0]
    netvm = net.find("properties/property[@name='netvm']")
    assert netvm is not None and netvm.text is None  # empty element means None
    assert os.stat(basic_app.store.path).st_mode & 0o777 == 0o660


BAD_FILES = {
    "not xml": (b"this is not xml", "not valid XML"),
    "empty": (b"", "empty"),
    "wrong root": (b"<foo/>", "expected <qubes>"),
    "unknown class": (b"<qubes><domains><domain class='EvilVM' id='domain-1'><properties>"
                      b"<property name='qid'>1</property></properties></domain></domains>"
                      b"</qubes>", "EvilVM"),
    "missing name": (b"<qubes><domains><domain class='AppVM' id='domain-1'><properties>"
                     b"<property name='qid'>1</property></properties></domain></domains>"
                     b"</qubes>", "lacks <property name=.name.>"),
    "bad qid": (b"<qubes><domains><domain class='AppVM' id='domain-1'><properties>"
                b"<property name='qid'>one</property></properties></domain></domains>"
                b"</qubes>", "qid"),
    "entity": (b"<!DOCTYPE q [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><qubes>&e;</qubes>",
               "no dom0"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_give_clear_errors_and_stay_untouched(tmp_path, name):
    content, message = BAD_FILES[name]
    path = tmp_path / "qubes.xml"
    path.write_bytes(content)
    with pytest.raises(exc.QubesException, match=message):
        Qubes(path)
    assert path.read_bytes() == content


def test_duplicate_names_in_file_refused(r4_store):
    text = r4_store.read_text().replace('<property name="name">sys-firewall</property>',
                                        '<property name="name">sys-net</property>')
    r4_store.write_text(text)
    with pytest.raises(exc.QubesStoreError, match="sys-net"):
        Qubes(r4_store)


def test_dangling_vm_reference_refused(r4_store):
    text = r4_store.read_text().replace(
        '<property name="netvm">sys-net</property>', '<property name="netvm">gone</property>')
    r4_store.write_text(text)
    with pytest.raises(exc.QubesStoreError, match="gone"):
        Qubes(r4_store)


def test_truncated_files_refused(r4_store):
    content = r4_store.read_bytes()
    for cut in range(1, len(content) - 20, 997):
        r4_store.write_bytes(content[:cut])
        with pytest.raises(exc.QubesStoreError):
            Qubes(r4_store)
        assert r4_store.read_bytes() == content[:cut]


def test_second_writer_in_same_process_refused(basic_app):
    basic_app.save()
    with pytest.raises(exc.QubesStoreError, match="locked by another writer"):
        Qubes(basic_app.store.path)


def test_second_writer_in_other_process_refused(basic_app):
    basic_app.save()
    before = basic_app.store.path.read_bytes()
    code = ("import sys\nfrom qubes_core.app import Qubes\n"
            "try:\n    Qubes(sys.argv[1])\nexcept Exception as err:\n"
            "    print(type(err).__name__, err)\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code, str(basic_app.store.path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "QubesStoreError" in result.stdout and "locked by another writer" in result.stdout
    assert basic_app.store.path.read_bytes() == before
    # a read-only opener is allowed but cannot save
    reader = Qubes(basic_app.store.path, lock=False)
    assert "work" in reader.domains
    with pytest.raises(exc.QubesStoreError, match="read-only"):
        reader.save()


def test_save_refused_when_file_changed_behind_our_back(basic_app, tmp_path):
    basic_app.save()
    path = basic_app.store.path
    intruder = tmp_path / "intruder.xml"
    intruder.write_bytes(path.read_bytes().replace(b"work", b"play"))
    os.rename(intruder, path)  # a writer that ignored the lock
    basic_app.domains["work"].memory = 999
    with pytest.raises(exc.QubesStoreError, match="changed by another writer"):
        basic_app.save()
    assert b"play" in path.read_bytes()


def test_create_never_overwrites(basic_app):
    basic_app.save()
    with pytest.raises(exc.QubesStoreError, match="exists"):
        Qubes.create_empty_store(basic_app.store.path)


def test_stale_temp_files_removed_on_open(basic_app):
    basic_app.save()
    path = basic_app.store.path
    basic_app.close()
    stale = path.parent / (path.name + "~abc123")
    stale.write_text("half a save")
    with Qubes(path):
        assert not stale.exists()


def test_lock_conflicts_with_reference_tools_lockf(basic_app):
    """A reference tool holding lockf on qubes.xml keeps us out, and the other way round."""
    basic_app.save()
    path = basic_app.store.path
    code = ("import fcntl, sys\nfd = open(sys.argv[1], 'r+')\n"
            "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except OSError:\n    sys.exit(3)\nsys.exit(0)\n")
    held = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
    assert held.returncode == 3
    basic_app.close()
    free = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
    assert free.returncode == 0
