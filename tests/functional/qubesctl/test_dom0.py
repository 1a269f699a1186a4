"""qubesctl in dom0 (``salt-call --local`` on the installation's tree) and the top check.

A real qubesd (offline runtime) serves a small installation; Salt runs for real.
The management DispVM path itself needs the sandbox runtime (tests/integration);
here a target with states but no management_dispvm must fail with the fix named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qubes_core.client.embedded import EmbeddedQubesd
from tests.functional.api.conftest import build_installation

STATES = {
    "demo/motd.sls": "{{ pillar['marker_dir'] }}/motd-{{ grains['id'] }}:\n"
                     "  file.managed:\n    - contents: hello\n",
    "demo/fail.sls": "fails:\n  cmd.run:\n    - name: 'false'\n",
    "demo/broken.sls": "broken: [\n",
    "top.sls": "user:\n  dom0:\n    - demo.motd\n  vm1:\n    - demo.motd\n"
               "  'I@role:worker':\n    - demo.motd\n",
}
PILLAR = {
    "top.sls": "user:\n  '*':\n    - common\n  vm2:\n    - secret-vm2\n  vm3:\n"
               "    - secret-vm3\n",
    "common.sls": "marker_dir: MARKERS\n",
    "secret-vm2.sls": "role: worker\nsecret: vm2-only\n",
    "secret-vm3.sls": "secret: vm3-only\n",
}


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three AppVMs and a template, a user Salt tree, a running qubesd (offline)."""
    base = tmp_path_factory.mktemp("qubesctl")
    build_installation(base)
    for root, files in (("srv/user_salt", STATES), ("srv/user_pillar", PILLAR)):
        for name, text in files.items():
            path = base / root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.replace("MARKERS", str(base / "markers")))
    (base / "markers").mkdir()
    daemon = EmbeddedQubesd.start(base, runtime="offline")
    yield base
    assert daemon is not None
    daemon.stop()


def qubesctl(base: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qubes_core.qubesctl.cli", "--base-dir",
                           str(base), *argv], capture_output=True, text=True, timeout=300)


def test_dom0_applies_states_and_prints_as_qubes_does(installation):
    done = qubesctl(installation, "state.apply", "demo.motd", "saltenv=user")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["dom0: OK"]
    assert (installation / "markers" / "motd-dom0").read_text().strip() == "hello"
    shown = qubesctl(installation, "--show-output", "--out=json", "state.apply", "demo.motd",
                     "saltenv=user")
    assert shown.returncode == 0
    header, document = shown.stdout.split("\n", 1)
    assert header == "dom0:"
    (result,) = json.loads(document)["local"].values()
    assert result["result"] is True and result["__sls__"] == "demo.motd"


@pytest.mark.parametrize("sls, problem", [
    ("demo.fail", 'Command "false" run'),
    ("demo.broken", "Rendering SLS 'user:demo.broken' failed"),
    ("demo.nothere", "No matching sls found for 'demo.nothere'"),
])
def test_a_failed_unrendered_or_missing_state_is_a_non_zero_exit(installation, sls, problem):
    done = qubesctl(installation, "state.apply", sls, "saltenv=user")
    assert done.returncode != 0
    log = installation / "log" / "mgmt-dom0.log"
    assert done.stdout.strip() == f"dom0: ERROR (exit code {done.returncode}, details in {log})"
    assert problem in done.stderr and problem in log.read_text()


def test_dom0_only_is_salt_call_with_the_same_options(installation):
    # Salt 3008 masks pillar values in its output; the keys tell whose pillar it is
    done = qubesctl(installation, "--dom0-only", "--id=vm2", "pillar.items", "saltenv=user")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "local:" and "role:" in done.stdout
    other = qubesctl(installation, "--dom0-only", "--id", "vm3", "pillar.items", "saltenv=user")
    assert other.returncode == 0, other.stderr
    assert "secret:" in other.stdout and "role:" not in other.stdout
    failed = qubesctl(installation, "--dom0-only", "state.apply", "demo.fail", "saltenv=user")
    assert failed.returncode == 2 and "Result: False" in failed.stdout


def test_targets_the_top_gives_nothing_are_skipped_at_once_and_the_rest_run(installation):
    done = qubesctl(installation, "--all", "state.highstate", "saltenv=user")
    lines = done.stdout.splitlines()
    assert lines[0] == "dom0: OK"
    skipped = {line.split(":")[0] for line in lines if "skipped (nothing in the top file)"
               in line}
    assert skipped == {"debian-12", "sys-net", "sys-firewall", "vm3"}
    # vm1 by name, vm2 by its pillar; neither has a management_dispvm here
    for name in ("vm1", "vm2"):
        assert f"{name}: ERROR (exit code 1, details in " in done.stdout
        assert f"{name} has no management_dispvm" in done.stderr
        assert "qvm.default-mgmt-dvm" in \
            (installation / "log" / f"mgmt-{name}.log").read_text()
    assert done.returncode == 1
    table = done.stderr[done.stderr.index("TARGET"):].splitlines()
    assert [row.split()[:2] for row in table[1:]][:1] == [["dom0", "OK"]]
    assert len(table) == 8  # header, dom0 and six VMs


def test_a_target_gets_its_own_pillar_and_no_other(installation, monkeypatch):
    from qubes_core.paths import resolve
    from qubes_core.qubesctl import dispvm, render, saltconf
    from qubes_core.qubesctl.targets import Target

    monkeypatch.setenv("QUBES_BASE_DIR", str(installation))
    opts = saltconf.minion_opts(saltconf.config_dir(resolve(installation)))
    opts["pillarenv"] = "user"
    vm2, vm3 = Target("vm2", "AppVM"), Target("vm3", "AppVM")
    render.prepare(opts, [vm2, vm3], need_states=False)
    assert vm2.pillar["secret"] == "vm2-only" and vm3.pillar["secret"] == "vm3-only"
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(dispvm.bundle(vm2, opts))) as archive:
        texts = {m.name: archive.extractfile(m).read().decode() for m in archive.getmembers()
                 if m.isfile()}
    assert "vm2-only" in texts["pillar/qubesctl_target.sls"]
    assert not [name for name, text in texts.items() if "vm3-only" in text]
    assert "secret-vm3" not in "".join(texts)  # the pillar tree itself is not handed over
