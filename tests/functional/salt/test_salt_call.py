"""``salt-call --local`` as users run it, a subprocess with this checkout's modules, on
an installation where no qubesd listens: the modules start one for the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qubes_core.app import Qubes
from qubes_core.client.embedded import listening
from qubes_core.mgmt import layout
from qubes_core.paths import resolve
from tests.functional.salt.conftest import build_base

SALT_CALL = str(Path(sys.executable).with_name("salt-call"))


@pytest.fixture
def minion(tmp_path):
    base = tmp_path / "base"
    build_base(base)
    layout.lay_out(base)
    root = tmp_path / "salt"
    layout.write_minion_config(root / "minion",
                               layout.minion_config(base, root_dir=root))
    return base, root


def salt_call(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SALT_CALL, "--local", "-c", str(root), "--out=json",
                           "--log-level=quiet", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_highstate_with_the_shipped_formulas(minion):
    base, root = minion
    enabled = salt_call(root, "top.enable", "qvm.sys-net", "qvm.sys-firewall", "qvm.work",
                        "qvm.default-mgmt-dvm")
    assert enabled.returncode == 0, enabled.stderr
    assert json.loads(enabled.stdout)["local"]["qvm.work.top"] == {"status": "enabled"}

    done = salt_call(root, "state.highstate")
    assert done.returncode == 0, done.stdout + done.stderr
    states = json.loads(done.stdout)["local"]
    assert states and all(item["result"] is True for item in states.values())
    assert not listening(resolve(base).admin_socket)  # the qubesd it started is gone

    app = Qubes(base / "qubes.xml", lock=False)
    try:
        names = sorted(vm.name for vm in app.domains)
        assert names == ["debian-12", "default-mgmt-dvm", "dom0", "sys-firewall", "sys-net",
                         "work"]
        assert app.domains["sys-net"].provides_network and app.domains["sys-net"].netvm is None
        assert app.domains["sys-firewall"].netvm.name == "sys-net"
        assert app.domains["work"].netvm.name == "sys-firewall"
        assert app.default_netvm.name == "sys-firewall"
        assert app.management_dispvm.name == "default-mgmt-dvm"
    finally:
        app.close()


def test_failures_exit_non_zero_with_one_line(minion):
    _, root = minion
    unknown = salt_call(root, "qvm.prefs", "no-such-vm")
    assert unknown.returncode != 0
    assert "No such domain: 'no-such-vm'" in unknown.stdout + unknown.stderr

    failed = salt_call(root, "state.single", "qvm.prefs", "debian-12", "memory=lots")
    assert failed.returncode != 0
    (item,) = json.loads(failed.stdout)["local"].values()
    assert item["result"] is False and "expected an integer" in item["comment"]


def test_pool_migration_with_the_qubesd_it_started(tmp_path):
    # A ``file`` pool (the older driver) on this filesystem, which may not reflink.
    base = tmp_path / "old"
    app = Qubes.create_empty_store(base / "qubes.xml", pool_dir=base, pool_driver="file")
    app.save()
    app.close()
    layout.lay_out(base)
    root = tmp_path / "salt"
    layout.write_minion_config(root / "minion", layout.minion_config(base, root_dir=root))
    before = (base / "qubes.xml").read_text()
    assert 'driver="file"' in before

    dry = salt_call(root, "qvm.pool_migrate", "varlibqubes", "setup_check=False", "test=True")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert json.loads(dry.stdout)["local"]["test"] is True
    assert (base / "qubes.xml").read_text() == before

    done = salt_call(root, "qvm.pool_migrate", "varlibqubes", "setup_check=False")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["local"]["changes"]["varlibqubes"] == {
        "old": "file", "new": "file-reflink"}
    assert 'driver="file-reflink"' in (base / "qubes.xml").read_text()
    assert not listening(resolve(base).admin_socket)
