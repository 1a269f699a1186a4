"""The ``qvm`` Salt modules on the sandbox runtime: commands really run in VMs, and
templates are really built.

``qvm.run`` and the ``run`` state go through ``qvm-run`` into a running sandbox VM
(output, exit status, a failing command failing the call and ``salt-call``);
``qvm.template_install`` and ``template_installed`` build a template with
``qubes-template-build`` from the cached root file system, and an AppVM of it runs.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from salt.exceptions import CommandExecutionError

from qubes_core.mgmt import connection, layout

SALT_CALL = str(Path(sys.executable).with_name("salt-call"))
_templates = itertools.count(1)


@pytest.fixture(scope="module")
def minion(installation, tmp_path_factory):
    """The minion configuration (its directory, its options) of the installation."""
    import salt.config

    layout.lay_out(installation.base)
    root = tmp_path_factory.mktemp(f"minion-{installation.suite}")
    config = layout.write_minion_config(
        root / "minion", layout.minion_config(installation.base, root_dir=root))
    opts = salt.config.minion_config(str(config))
    yield root, opts
    connection.forget(opts)


@pytest.fixture(scope="module")
def loaders(minion):
    from saltfactories.utils.functional import Loaders

    return Loaders(minion[1])


def salt_call(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SALT_CALL, "--local", "-c", str(root), "--out=json",
                           "--log-level=quiet", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_run_module_output_status_and_test_mode(installation, loaders):
    qvm = loaders.modules.qvm
    vm = installation.new_appvm("saltrun")
    with pytest.raises(CommandExecutionError, match=r"exited 126"):
        qvm.run(vm, "true")  # halted, and no ``auto`` flag: qvm-run refuses
    assert installation.state(vm) == "Halted"

    done = qvm.run(vm, "echo out; id -un", user="user", flags=["auto"])
    assert done["result"] is True and done["retcode"] == 0
    assert done["comment"] == "out\nuser\n"
    assert installation.state(vm) == "Running"
    assert qvm.run(vm, "id -un", user="root")["comment"] == "root\n"

    with pytest.raises(CommandExecutionError, match=r"'echo bad >&2; exit 3' in .* exited 3: bad"):
        qvm.run(vm, "echo bad >&2; exit 3")

    dry = qvm.run(vm, "touch /tmp/dry", test=True)
    assert dry["test"] is True and dry["changes"] == {}
    assert installation.sh(vm, "test -e /tmp/dry && echo yes || echo no") == "no\n"


def test_run_state_and_salt_call(installation, loaders, minion):
    states = loaders.states.qvm
    vm = installation.new_appvm("saltstate")
    ran = states.run(vm, cmd="echo state > /tmp/mark; cat /tmp/mark", flags=["auto"])
    assert ran.result is True and ran.comment == "state\n"
    assert ran.changes == {"cmd": {"old": None, "new": "echo state > /tmp/mark; cat /tmp/mark"}}
    assert installation.sh(vm, "cat /tmp/mark") == "state\n"

    failed = states.run(vm, cmd="exit 5")
    assert failed.result is False and "exited 5" in failed.comment

    root = minion[0]
    ok = salt_call(root, "qvm.run", vm, "echo from-salt-call")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["local"]["comment"] == "from-salt-call\n"
    bad = salt_call(root, "qvm.run", vm, "exit 4")
    assert bad.returncode != 0 and "exited 4" in bad.stdout + bad.stderr
    state_bad = salt_call(root, "state.single", "qvm.run", vm, "cmd=exit 6")
    assert state_bad.returncode != 0
    (item,) = json.loads(state_bad.stdout)["local"].values()
    assert item["result"] is False and "exited 6" in item["comment"]


def test_template_installed_builds_a_template_that_runs(installation, loaders):
    states = loaders.states.qvm
    name = f"salt-tpl-{installation.suite}-{next(_templates)}"
    dry = states.template_installed(name, suite=installation.suite, test=True)
    assert dry.result is None
    assert dry.changes["suite"] == {"old": None, "new": installation.suite}
    assert name not in installation.names()

    # The root file system comes from the cache the installation's template was built
    # from: this build takes seconds.
    built = states.template_installed(name, suite=installation.suite)
    assert built.result is True, built.comment
    assert built.changes["class"] == {"old": None, "new": "TemplateVM"}
    assert states.template_installed(name, suite=installation.suite).changes == {}
    assert loaders.modules.qvm.template_install(name)["changes"] == {}

    vm = installation.new_appvm("oftpl")
    installation.call("admin.vm.property.Set", vm, "template", name)
    version = installation.sh(vm, "cat /etc/debian_version")
    assert version.startswith({"bookworm": "12.", "trixie": "13."}[installation.suite])
    installation.call("admin.vm.Kill", vm)
