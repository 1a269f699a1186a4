"""qubesctl end to end on the sandbox runtime: templates configured from management DispVMs.

Each installation (bookworm and trixie, from tests/integration/conftest.py) gets a
Salt-enabled template ``mgmt-tpl`` (bookworm, ``qubes-template-build --with-salt``,
its root file system cached outside the checkout) and ``default-mgmt-dvm`` on it as
every VM's ``management_dispvm``. The targets have no Salt: only Python.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BIN, Installation

MGMT_TEMPLATE = "mgmt-tpl"
MGMT_DVM = "default-mgmt-dvm"
POLICY = Path("etc/qubes/policy.d/30-qubesctl-salt.policy")

TEMPLATE_FORMULA = """\
probe-package:
  pkg.installed:
    - sources:
      - qubesctl-probe: salt://tplconf/qubesctl-probe.deb
probe-user:
  user.present:
    - name: probeuser
    - shell: /bin/bash
probe-file:
  file.managed:
    - name: /etc/qubesctl-probe
    - contents: configured by {{ grains['id'] }} for {{ pillar['qubes']['type'] }}
"""
STATES = {
    "tplconf/init.sls": TEMPLATE_FORMULA,
    "fails.sls": "fails:\n  cmd.run:\n    - name: 'false'\n",
    "slow.sls": "slow:\n  cmd.run:\n    - name: 'sleep 120'\n",
    "mark.sls": "/tmp/qubesctl-mark:\n  file.managed:\n    - contents: {{ grains['id'] }}\n",
    "dom0mark.sls": "DOM0MARK:\n  file.managed:\n    - contents: dom0\n",
}


def make_deb(dest: Path) -> None:
    """A small architecture-independent package with one file."""
    root = dest.parent / "deb-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/qubesctl-probe").mkdir(parents=True)
    (root / "usr/share/qubesctl-probe/marker").write_text("from a local .deb\n")
    (root / "DEBIAN/control").write_text(
        "Package: qubesctl-probe\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: qubes_core tests <tests@localhost>\nDescription: qubesctl test package\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(dest)],
                   check=True, capture_output=True)


@pytest.fixture(scope="session")
def managed(installation: Installation) -> Installation:
    """The installation with a management DispVM template and a user Salt tree."""
    inst = installation
    if MGMT_DVM in inst.names():
        return inst
    build = subprocess.run([str(BIN / "qubes-template-build"), "--base-dir", str(inst.base),
                            "--suite", "bookworm", "--with-salt", MGMT_TEMPLATE],
                           env=inst.env, capture_output=True, timeout=1800, check=False)
    assert build.returncode == 0, build.stderr.decode()
    from qubes_core.paths import resolve
    from qubes_core.qubesctl.dispvm import prebuild_thin

    prebuild_thin(resolve(inst.base), MGMT_TEMPLATE)
    inst.call("admin.vm.Create.AppVM", "dom0", MGMT_TEMPLATE, f"name={MGMT_DVM} label=black")
    inst.call("admin.vm.property.Set", MGMT_DVM, "template_for_dispvms", "True")
    inst.call("admin.property.Set", "dom0", "management_dispvm", MGMT_DVM)
    salt = inst.base / "srv/user_salt"
    for name, text in STATES.items():
        path = salt / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("DOM0MARK", str(inst.base / "dom0-mark")))
    make_deb(salt / "tplconf/qubesctl-probe.deb")
    return inst


def qubesctl(inst: Installation, *argv: str, timeout: float = 600
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qubes_core.qubesctl.cli", "--base-dir",
                           str(inst.base), *argv], env=inst.env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def leftovers(inst: Installation) -> list[str]:
    """Management DispVMs and temporary policy lines still there."""
    found = [name for name in inst.names() if name.startswith("disp-mgmt-")]
    if (inst.base / POLICY).exists():
        found.append(str(POLICY))
    return found


def root_file(inst: Installation, vm: str, path: str) -> str:
    """A file of a halted VM's root image, read with debugfs (nothing mounted)."""
    image = inst.base / "vm-templates" / vm / "root.img"
    result = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)],
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_a_template_formula_applies_inside_the_template(managed: Installation) -> None:
    inst = managed
    template = inst.template
    assert inst.state(template) == "Halted"
    done = qubesctl(inst, "--skip-dom0", f"--targets={template}", "state.apply", "tplconf",
                    "saltenv=user")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{template}: OK"]
    assert inst.state(template) == "Halted"  # it was not running before
    assert leftovers(inst) == []
    # in the template's root after its shutdown...
    assert root_file(inst, template, "/etc/qubesctl-probe") == \
        f"configured by {template} for template\n"
    assert root_file(inst, template, "/usr/share/qubesctl-probe/marker") == \
        "from a local .deb\n"
    assert "probeuser:" in root_file(inst, template, "/etc/passwd")
    # ...and an AppVM of it sees the change
    vm = inst.new_appvm("sees")
    out = inst.sh(vm, "cat /etc/qubesctl-probe; dpkg-query -W -f='${Status}' qubesctl-probe;"
                  " echo; id -un probeuser")
    assert out == f"configured by {template} for template\ninstall ok installed\nprobeuser\n"
    inst.call("admin.vm.Kill", vm)
    # the summary says it changed nothing the second time
    again = qubesctl(inst, "--skip-dom0", f"--targets={template}", "state.apply", "tplconf",
                     "saltenv=user")
    assert again.returncode == 0, again.stdout + again.stderr
    row = next(line for line in again.stderr.splitlines() if line.startswith(template))
    assert row.split()[1:3] == ["OK", "0"]


def test_a_failing_state_in_a_target_is_a_non_zero_exit(managed: Installation) -> None:
    inst = managed
    vm = inst.new_appvm("fails")
    done = qubesctl(inst, "--skip-dom0", f"--targets={vm}", "state.apply", "fails",
                    "saltenv=user")
    assert done.returncode != 0
    log = inst.base / "log" / f"mgmt-{vm}.log"
    assert done.stdout.strip() == \
        f"{vm}: ERROR (exit code {done.returncode}, details in {log})"
    assert 'Command "false" run' in log.read_text()
    assert inst.state(vm) == "Halted" and leftovers(inst) == []
    missing = qubesctl(inst, "--skip-dom0", f"--targets={vm}", "state.apply", "nosuchsls",
                       "saltenv=user")
    assert missing.returncode != 0 and "No matching sls found" in missing.stderr


# Runs once per test run, on the bookworm installation only.
@pytest.mark.parametrize("installation", ["bookworm"], indirect=True)
def test_a_pillar_that_does_not_render_fails_its_target_alone(managed: Installation) -> None:
    inst = managed
    good, bad = inst.new_appvm("goodpillar"), inst.new_appvm("badpillar")
    pillar = inst.base / "srv/user_pillar"
    pillar.mkdir(parents=True, exist_ok=True)
    (pillar / "top.sls").write_text(f"user:\n  {bad}:\n    - broken\n")
    (pillar / "broken.sls").write_text("key: [unclosed\n")
    try:
        done = qubesctl(inst, "--skip-dom0", f"--targets={good},{bad}", "state.apply",
                        "mark", "saltenv=user")
    finally:
        (pillar / "top.sls").unlink()
        (pillar / "broken.sls").unlink()
    assert done.returncode != 0
    lines = sorted(done.stdout.splitlines())
    assert lines[0].startswith(f"{bad}: ERROR") and lines[1] == f"{good}: OK", done.stdout
    assert f"the pillar of {bad} did not render" in done.stderr
    assert inst.state(good) == inst.state(bad) == "Halted" and leftovers(inst) == []


# Runs once per test run, on the bookworm installation only.
@pytest.mark.parametrize("installation", ["bookworm"], indirect=True)
def test_dom0_and_four_targets_in_one_highstate(managed: Installation) -> None:
    inst = managed
    vms = [inst.new_appvm("hs") for _ in range(4)]
    idle = inst.new_appvm("idle")
    top = "user:\n  dom0:\n    - dom0mark\n" + "".join(f"  {vm}:\n    - mark\n" for vm in vms)
    (inst.base / "srv/user_salt/top.sls").write_text(top)
    try:
        done = qubesctl(inst, "--all", "--max-concurrency", "4", "--show-output",
                        "--out=json", "state.highstate", "saltenv=user")
    finally:
        (inst.base / "srv/user_salt/top.sls").unlink()
    assert done.returncode == 0, done.stdout + done.stderr
    assert (inst.base / "dom0-mark").read_text().strip() == "dom0"
    blocks = parse_shown(done.stdout)
    assert blocks["dom0"]["local"]  # dom0's own salt-call result
    for vm in vms:
        (result,) = blocks[vm][vm].values()
        assert result["result"] is True and result["changes"]
    skipped = [line for line in done.stdout.splitlines() if "skipped" in line]
    assert f"{idle}: skipped (nothing in the top file)" in skipped
    table = done.stderr[done.stderr.index("TARGET"):].splitlines()
    rows = {row.split()[0]: row.split()[1] for row in table[1:]}
    assert {vm: rows[vm] for vm in ["dom0", *vms]} == dict.fromkeys(["dom0", *vms], "OK")
    assert rows[idle] == "skipped"
    assert leftovers(inst) == []
    assert all(inst.state(vm) == "Halted" for vm in vms)


def parse_shown(stdout: str) -> dict[str, Any]:
    """``NAME:`` header lines each followed by one JSON document (and skip lines)."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] = {}
    text = stdout
    while text.strip():
        line, _, text = text.lstrip("\n").partition("\n")
        if line.endswith(":") and " " not in line:
            document, end = decoder.raw_decode(text.lstrip())
            found[line[:-1]] = document
            text = text.lstrip()[end:]
    return found


# Runs once per test run, on the bookworm installation only.
@pytest.mark.parametrize("installation", ["bookworm"], indirect=True)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_leaves_nothing_behind(managed: Installation, signum: int) -> None:
    inst = managed
    vm = inst.new_appvm("slow")
    run = subprocess.Popen([sys.executable, "-m", "qubes_core.qubesctl.cli", "--base-dir",
                            str(inst.base), "--skip-dom0", f"--targets={vm}", "state.apply",
                            "slow", "saltenv=user"], env=inst.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    dispvm = f"disp-mgmt-{vm}"
    deadline = time.monotonic() + 120
    # wait until salt runs the sleeping state inside the target
    processes = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
    while "sleep 120" not in inst.qvm_run("-p", "-u", "root", "--no-autostart", vm,
                                          processes).stdout.decode():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the slow state never started"
        time.sleep(0.2)
    assert (inst.base / POLICY).exists() and inst.state(dispvm) == "Running"
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    if signum == signal.SIGINT:
        assert run.returncode == 130, stderr
        assert leftovers(inst) == [] and inst.state(vm) == "Halted"
        return
    assert run.returncode == -signal.SIGKILL
    assert dispvm in leftovers(inst) and str(POLICY) in leftovers(inst)
    # the next run cleans up what the killed one left, then does its own job
    nxt = qubesctl(inst, "--skip-dom0", f"--targets={vm}", "state.apply", "mark",
                   "saltenv=user")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert f"removed {dispvm} and its policy lines" in nxt.stderr
    assert leftovers(inst) == []
    inst.call("admin.vm.Kill", vm)  # the killed run had started it: still running
