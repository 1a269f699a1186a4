"""Each qvm-* tool's main paths against a real qubesd: output, exit codes, bad arguments."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.functional.cli.conftest import BIN, Installation
from tests.requirements import require


def ok(result) -> str:
    assert result.code == 0, result
    assert result.err == "", result
    return result.out


def one_line_error(result, code: int = 1) -> str:
    """A failure is one line on stderr, no traceback, the given exit code."""
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    return lines[0]


def test_qvm_ls_table_raw_data_and_filters(inst: Installation):
    out = ok(inst.run("qvm-ls"))
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "CLASS", "LABEL", "TEMPLATE", "NETVM"]
    assert lines[-1].split() == ["work", "HALTED", "AppVM", "blue", "debian-12", "sys-firewall"]
    raw = ok(inst.run("qvm-ls", "--raw-data"))
    assert "work|HALTED|AppVM|blue|debian-12|sys-firewall\n" in raw
    assert "sys-net|HALTED|AppVM|red|debian-12|-\n" in raw
    assert ok(inst.run("qvm-ls", "--raw-list")).split() == [
        "debian-12", "dom0", "sys-firewall", "sys-net", "work"]
    assert ok(inst.run("qvm-ls", "--raw-data", "--fields", "name,label,memory", "work")) \
        == "work|blue|400\n"
    assert ok(inst.run("qvm-ls", "--raw-list", "--class", "TemplateVM")) == "debian-12\n"
    assert ok(inst.run("qvm-ls", "--raw-list", "--running")) == "dom0\n"
    assert ok(inst.run("qvm-ls", "--raw-list", "--halted", "--exclude", "sys-net")).split() \
        == ["debian-12", "sys-firewall", "work"]
    ok(inst.run("qvm-tags", "work", "add", "tagged"))
    assert ok(inst.run("qvm-ls", "--raw-list", "--tags", "tagged", "other")) == "work\n"
    assert "LABEL" in ok(inst.run("qvm-ls", "--format", "full")).splitlines()[0]
    assert "unknown column 'nonsense'" in one_line_error(
        inst.run("qvm-ls", "--fields", "name,nonsense"))
    assert "no such domain: 'ghost'" in one_line_error(inst.run("qvm-ls", "ghost"))
    assert inst.run("qvm-ls", "--format", "bogus").code == 2
    assert "memory" in ok(inst.run("qvm-ls", "--help-columns")).split()


def test_qvm_prefs_and_qubes_prefs(inst: Installation):
    listing = ok(inst.run("qvm-prefs", "work")).splitlines()
    rows = {line.split()[0]: line.split() for line in listing}
    assert rows["label"][:3] == ["label", "-", "blue"]
    assert rows["memory"][1] == "D"
    assert ok(inst.run("qvm-prefs", "work", "netvm")) == "sys-firewall\n"
    ok(inst.run("qvm-prefs", "work", "memory", "512"))
    assert ok(inst.run("qvm-prefs", "work", "memory")) == "512\n"
    ok(inst.run("qvm-prefs", "--default", "work", "memory"))
    assert ok(inst.run("qvm-prefs", "work", "memory")) == "400\n"
    ok(inst.run("qvm-prefs", "work", "netvm", ""))
    assert ok(inst.run("qvm-prefs", "work", "netvm")) == "\n"
    assert "memory" not in ok(inst.run("qvm-prefs", "--hide-default", "work"))
    assert "No such domain" in one_line_error(inst.run("qvm-prefs", "ghost", "label"))
    assert "nope" in one_line_error(inst.run("qvm-prefs", "work", "nope"))
    assert "memory" in one_line_error(inst.run("qvm-prefs", "work", "memory", "lots"))
    assert inst.run("qvm-prefs").code == 2
    assert ok(inst.run("qubes-prefs", "default_netvm")) == "sys-firewall\n"
    ok(inst.run("qubes-prefs", "default_netvm", "sys-net"))
    assert ok(inst.run("qubes-prefs", "default_netvm")) == "sys-net\n"
    assert "default_template" in ok(inst.run("qubes-prefs"))


def test_as_processes_exit_codes_and_a_closed_pipe(inst: Installation):
    """What only a real process shows: its exit status, and quiet on a closed pipe."""
    assert inst.run("qvm-ls", "--raw-data", "-O", "name,label", "work", process=True).out \
        == "work|blue\n"
    missing = inst.run("qvm-prefs", "ghost", "label", process=True)
    assert missing.code == 1 and missing.err.count("\n") == 1
    assert inst.run("qvm-ls", "--nonsense", process=True).code == 2
    reader, writer = os.pipe()
    os.close(reader)
    done = subprocess.run([str(BIN / "qvm-prefs"), "work"], stdout=writer,
                          stderr=subprocess.PIPE, env=inst.env, timeout=60)
    os.close(writer)
    assert done.returncode == 1 and done.stderr == b""


def test_verbose_shows_the_traceback(inst: Installation):
    result = inst.run("qvm-prefs", "--verbose", "work", "nope")
    assert result.code == 1 and "Traceback" in result.err
    assert result.err.strip().splitlines()[-1].startswith("qvm-prefs: error:")


def test_qvm_features_and_qvm_service(inst: Installation):
    ok(inst.run("qvm-features", "work", "gui", "1"))
    ok(inst.run("qvm-features", "work", "video-model", "none"))
    assert ok(inst.run("qvm-features", "work")).splitlines() == ["gui          1",
                                                                 "video-model  none"]
    assert ok(inst.run("qvm-features", "work", "gui")) == "1\n"
    unset = inst.run("qvm-features", "work", "missing")
    assert (unset.code, unset.out, unset.err) == (1, "", "")
    ok(inst.run("qvm-features", "--unset", "work", "gui"))
    ok(inst.run("qvm-features", "--unset", "work", "gui"))  # unsetting twice is fine
    assert inst.run("qvm-features", "work", "gui").code == 1
    ok(inst.run("qvm-service", "work", "cups", "on"))
    ok(inst.run("qvm-service", "--disable", "work", "crond"))
    assert ok(inst.run("qvm-service", "work")).split() == ["crond", "off", "cups", "on"]
    assert ok(inst.run("qvm-features", "work", "service.cups")) == "1\n"
    assert ok(inst.run("qvm-service", "work", "crond")) == "off\n"
    ok(inst.run("qvm-service", "-D", "work", "crond"))
    assert inst.run("qvm-service", "work", "crond").code == 1
    assert "invalid service value" in one_line_error(inst.run("qvm-service", "work", "x", "maybe"))
    assert "no such domain" in one_line_error(inst.run("qvm-features", "ghost"))


def test_qvm_tags(inst: Installation):
    automatic = set(ok(inst.run("qvm-tags", "work")).split())  # e.g. guivm-dom0, as Qubes
    ok(inst.run("qvm-tags", "work", "add", "b-tag", "a-tag"))
    listed = ok(inst.run("qvm-tags", "work")).split()
    assert listed == sorted(automatic | {"a-tag", "b-tag"})
    assert ok(inst.run("qvm-tags", "work", "list", "a-tag")) == "a-tag\n"
    absent = inst.run("qvm-tags", "work", "list", "c-tag")
    assert (absent.code, absent.out) == (1, "")
    ok(inst.run("qvm-tags", "work", "del", "a-tag"))
    assert ok(inst.run("qvm-tags", "work", "ls")).split() == sorted(automatic | {"b-tag"})
    assert "no tag 'a-tag'" in one_line_error(inst.run("qvm-tags", "work", "del", "a-tag"))
    assert inst.run("qvm-tags", "work", "frobnicate").code == 2


def test_qvm_create_remove_and_clone(inst: Installation):
    ok(inst.run("qvm-create", "--label", "red", "--prop", "memory=600", "made"))
    assert ok(inst.run("qvm-ls", "--raw-data", "-O", "name,class,label,template,memory",
                       "made")) == "made|AppVM|red|debian-12|600\n"
    assert os.path.exists(inst.base / "appvms" / "made" / "private.img")
    error = one_line_error(inst.run("qvm-create", "--label", "red", "--prop", "nope=1", "bad"))
    assert "nope" in error and "not created" in error
    assert inst.run("qvm-check", "-q", "bad").code == 1  # nothing left behind
    assert "already exists" in one_line_error(inst.run("qvm-create", "-l", "red", "made"))
    assert inst.run("qvm-create", "made2").code == 2  # --label is required
    ok(inst.run("qvm-create", "--class", "StandaloneVM", "--label", "green", "alone"))
    assert ok(inst.run("qvm-ls", "--raw-data", "-O", "name,class,template", "alone")) == \
        "alone|StandaloneVM|-\n"

    ok(inst.run("qvm-features", "made", "f", "v"))
    ok(inst.run("qvm-tags", "made", "add", "t"))
    private = inst.base / "appvms" / "made" / "private.img"
    with open(private, "r+b") as image:
        image.write(b"private data")
    ok(inst.run("qvm-clone", "made", "copy"))
    assert ok(inst.run("qvm-prefs", "copy", "memory")) == "600\n"
    assert ok(inst.run("qvm-features", "copy", "f")) == "v\n"
    assert "t" in ok(inst.run("qvm-tags", "copy")).split()
    copied = inst.base / "appvms" / "copy" / "private.img"
    with open(copied, "rb") as data:
        assert data.read(12) == b"private data"
    assert "already exists" in one_line_error(inst.run("qvm-clone", "made", "copy"))

    refused = inst.run("qvm-remove", "made", stdin="n\n")
    assert refused.code == 1 and inst.run("qvm-check", "-q", "made").code == 0
    ok(inst.run("qvm-remove", "-f", "made", "copy"))
    assert inst.run("qvm-check", "-q", "made").code == 1
    assert not private.exists()
    confirmed = inst.run("qvm-remove", "alone", stdin="y\n")
    assert confirmed.code == 0, confirmed
    assert "no such domain" in one_line_error(inst.run("qvm-remove", "-f", "ghost"))


def test_power_tools_and_qvm_check(inst: Installation):
    assert ok(inst.run("qvm-check", "work")) == "work: exists\n"
    not_running = inst.run("qvm-check", "--running", "work")
    assert (not_running.code, not_running.out) == (1, "work: is not running\n")
    ok(inst.run("qvm-start", "work"))  # starts its netvm chain first
    assert ok(inst.run("qvm-ls", "--raw-list", "--running")).split() == [
        "dom0", "sys-firewall", "sys-net", "work"]
    assert ok(inst.run("qvm-check", "--running", "work", "sys-net")) == \
        "work, sys-net: are running\n"
    error = one_line_error(inst.run("qvm-start", "work"))
    assert error.startswith("qvm-start: error: work:")
    ok(inst.run("qvm-start", "--skip-if-running", "work"))
    ok(inst.run("qvm-pause", "work"))
    assert ok(inst.run("qvm-ls", "--raw-data", "-O", "name,state", "work")) == "work|PAUSED\n"
    ok(inst.run("qvm-unpause", "work"))
    refused = inst.run("qvm-shutdown", "sys-net")
    assert "sys-net" in one_line_error(refused) and "sys-firewall" in refused.err
    ok(inst.run("qvm-kill", "work"))
    ok(inst.run("qvm-start", "work"))
    ok(inst.run("qvm-shutdown", "--wait", "--all"))  # in waves: work, sys-firewall, sys-net
    assert ok(inst.run("qvm-ls", "--raw-list", "--running")) == "dom0\n"
    assert inst.run("qvm-check", "--template", "debian-12").code == 0
    assert inst.run("qvm-check", "--template", "work").code == 1
    assert inst.run("qvm-check", "ghost").out == "ghost: does not exist\n"
    assert inst.run("qvm-kill").code == 2  # no qube named
    assert inst.run("qvm-shutdown", "--exclude", "work", "sys-net").code == 2


def test_qvm_pool(inst: Installation, tmp_path):
    out = ok(inst.run("qvm-pool"))
    assert out.splitlines()[0].split() == ["NAME", "DRIVER"]
    assert any(line.split() == ["varlibqubes", "file-reflink"] for line in out.splitlines())
    info = dict(line.split(None, 1) for line in ok(inst.run("qvm-pool", "info",
                                                             "varlibqubes")).splitlines()
                if len(line.split(None, 1)) == 2)
    assert info["driver"] == "file-reflink"
    assert "file-reflink" in ok(inst.run("qvm-pool", "drivers"))
    (tmp_path / "extra").mkdir()
    ok(inst.run("qvm-pool", "add", "extra", "file-reflink", "-o",
                f"dir_path={tmp_path / 'extra'},setup_check=no"))
    ok(inst.run("qvm-pool", "set", "extra", "-o", "revisions_to_keep=3"))
    assert "revisions_to_keep  3" in ok(inst.run("qvm-pool", "info", "extra"))
    ok(inst.run("qvm-pool", "remove", "extra"))
    assert "extra" not in ok(inst.run("qvm-pool", "list"))
    assert "no such storage driver" in one_line_error(
        inst.run("qvm-pool", "add", "x", "nodriver"))
    assert "qubesd serves this installation" in one_line_error(inst.run("qvm-pool", "migrate"))


def test_qvm_volume(inst: Installation, tmp_path):
    listing = ok(inst.run("qvm-volume", "list", "work")).splitlines()
    assert listing[0].split() == ["POOL:VOLUME", "VMNAME", "VOLUME_NAME", "REVERT_POSSIBLE"]
    assert ["varlibqubes:appvms/work/private", "work", "private", "No"] in [
        line.split() for line in listing]
    assert ok(inst.run("qvm-volume", "info", "work:private", "pool")) == "varlibqubes\n"
    ok(inst.run("qvm-volume", "resize", "work:private", "3G"))
    assert ok(inst.run("qvm-volume", "info", "work:private", "size")) == f"{3 << 30}\n"
    image = tmp_path / "image"
    image.write_bytes(b"imported" + b"\0" * (1 << 20) + b"end")
    ok(inst.run("qvm-volume", "import", "work:private", str(image)))
    private = inst.base / "appvms" / "work" / "private.img"
    with open(private, "rb") as data:
        assert data.read((1 << 20) + 11) == image.read_bytes()
    ok(inst.run("qvm-start", "work"))
    ok(inst.run("qvm-shutdown", "--wait", "work"))  # the old image becomes a revision
    revisions = ok(inst.run("qvm-volume", "revisions", "work:private")).split()
    assert len(revisions) == 1
    ok(inst.run("qvm-volume", "revert", "work:private"))
    ok(inst.run("qvm-volume", "config", "work:private", "revisions_to_keep", "2"))
    assert ok(inst.run("qvm-volume", "info", "work:private", "revisions_to_keep")) == "2\n"
    assert "--size" in one_line_error(inst.run("qvm-volume", "import", "work:private", "-"))
    assert "larger" in one_line_error(inst.run("qvm-volume", "import", "--no-resize",
                                               "--size", "4G", "work:private", "-"))
    assert inst.run("qvm-volume", "info", "no-colon").code == 2
    assert one_line_error(inst.run("qvm-volume", "info", "work:nothing"))


def test_qvm_firewall(inst: Installation):
    assert ok(inst.run("qvm-firewall", "work", "--raw")) == "action=accept\n"
    ok(inst.run("qvm-firewall", "work", "add", "--before", "0", "drop", "proto=tcp",
                "dsthost=10.0.0.0/8", "dstports=22", "expire=+3600", "comment=no ssh here"))
    raw = ok(inst.run("qvm-firewall", "work", "--raw")).splitlines()
    assert raw[1] == "action=accept"
    fields = dict(word.split("=", 1) for word in raw[0].split(" comment=")[0].split())
    assert fields["action"] == "drop" and fields["dsthost"] == "10.0.0.0/8"
    assert abs(int(fields["expire"]) - (time.time() + 3600)) < 300
    assert raw[0].endswith("comment=no ssh here")
    table = ok(inst.run("qvm-firewall", "work")).splitlines()
    assert table[0].split()[:4] == ["NO", "ACTION", "HOST", "PROTOCOL"]
    assert table[1].split()[:5] == ["0", "drop", "10.0.0.0/8", "tcp", "22-22"]
    ok(inst.run("qvm-firewall", "work", "add", "accept", "dsthost=example.com",
                "expire=2099-01-01T00:00"))
    assert "example.com" in ok(inst.run("qvm-firewall", "work", "--raw"))
    assert "invalid expire" in one_line_error(
        inst.run("qvm-firewall", "work", "add", "accept", "expire=tomorrow"))
    before = ok(inst.run("qvm-firewall", "work", "--raw"))
    assert one_line_error(inst.run("qvm-firewall", "work", "add", "action=maybe"))
    assert ok(inst.run("qvm-firewall", "work", "--raw")) == before  # nothing changed
    ok(inst.run("qvm-firewall", "work", "del", "--rule-no", "0"))
    assert "10.0.0.0" not in ok(inst.run("qvm-firewall", "work", "--raw"))
    ok(inst.run("qvm-firewall", "work", "reset"))
    assert ok(inst.run("qvm-firewall", "work", "--raw")) == "action=accept\n"
    assert "no rule number 5" in one_line_error(
        inst.run("qvm-firewall", "work", "del", "--rule-no", "5"))


@pytest.mark.parametrize("tool", ["qvm-block", "qvm-usb"])
def test_device_classes_without_backend_say_so(inst: Installation, tool):
    result = inst.run(tool, "list")
    assert result.code == 0 and result.out.split() == ["BACKEND:DEVID", "DESCRIPTION", "USED",
                                                       "BY"]
    assert result.err == f"no backend offers {tool[4:]} devices here\n"


def test_qvm_device_is_qvm_pci(inst: Installation):
    as_pci = inst.run("qvm-pci", "list")
    as_device = inst.run("qvm-device", "pci", "list")
    assert as_pci.code == as_device.code == 0, (as_pci, as_device)
    assert as_pci.out == as_device.out
    assert as_pci.out.splitlines()[0].split() == ["BACKEND:DEVID", "DESCRIPTION", "USED", "BY"]
    assert inst.run("qvm-device", "nosuchclass", "list").code == 2
    assert inst.run("qvm-pci", "attach", "work", "no-colon").code == 2


def test_qvm_pci_assign_and_unassign(inst: Installation):
    """A host PCI device (read from this machine's sysfs by qubesd) assigned to a qube."""
    listing = ok(inst.run("qvm-pci", "list")).splitlines()[1:]
    require(bool(listing), "needs a PCI device in /sys/bus/pci (any will do: none is touched)")
    device = listing[0].split()[0]
    assert device.startswith("dom0:")
    ok(inst.run("qvm-pci", "assign", "work", device, "-o", "no-strict-reset=True"))
    used = {line.split()[0]: line for line in ok(inst.run("qvm-pci", "list")).splitlines()}
    assert "work (" in used[device]
    assert ok(inst.run("qvm-pci", "list", "work")).splitlines()[1].split()[0] == device
    assert inst.run("qvm-pci", "assign", "work", device).code == 1  # already assigned
    ok(inst.run("qvm-pci", "unassign", "work", device))
    assert len(ok(inst.run("qvm-pci", "list", "work")).splitlines()) == 1  # header only
    assert "no such domain" in one_line_error(inst.run("qvm-pci", "assign", "ghost", device))


def on_a_terminal(inst: Installation, *argv: str) -> tuple[int, str, str]:
    """Run a tool as a process with stderr on a pseudo-terminal: (exit, stdout, terminal)."""
    import pty
    import threading

    master, slave = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the tool has exited
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        done = subprocess.run([str(BIN / argv[0]), *argv[1:]], stdout=subprocess.PIPE,
                              stderr=slave, stdin=subprocess.DEVNULL, env=inst.env,
                              timeout=120, check=False)
    finally:
        os.close(slave)
        reader.join(30)
        os.close(master)
    return done.returncode, done.stdout.decode(), seen.decode(errors="replace")


def test_long_operations_show_progress_only_on_a_terminal(inst: Installation, tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"x" * (8 << 20))
    code, out, terminal = on_a_terminal(inst, "qvm-volume", "import", "work:private",
                                        str(image))
    assert (code, out) == (0, "")
    assert "importing work:private: 100% 8.0 MiB of 8.0 MiB" in terminal
    code, out, terminal = on_a_terminal(inst, "qvm-clone", "work", "work-copy")
    assert (code, out) == (0, "")
    assert "cloning work to work-copy: volume private" in terminal

    piped = inst.run("qvm-volume", "import", "work:private", str(image), process=True)
    assert (piped.code, piped.out, piped.err) == (0, "", "")
    piped = inst.run("qvm-clone", "work", "work-copy2", process=True)
    assert (piped.code, piped.out, piped.err) == (0, "", "")
