"""What ``qvm-ls`` and ``qvm-prefs`` load, as processes against a real qubesd.

A tool's start-up is most of its cost, so the client path keeps to the modules it
uses: not typing, pathlib, socket.py, shutil (argparse's terminal measure) nor
contextlib, and, while a qubesd listens, not the embedded-qubesd machinery. Module
names are asserted here, not times (those are measured in bench/bench_cli.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_core.client.embedded import listening
from tests.functional.api.conftest import (
    RunningQubesd,
    build_installation,
    serve_installation,
)

NOT_LOADED = {"typing", "pathlib", "socket", "shutil", "contextlib", "subprocess",
              "dataclasses", "inspect", "asyncio", "qubes_core.paths",
              "qubes_core.client.embedded"}

# What the console scripts do, then the modules the tool added to the interpreter's.
RUN_TOOL = """
import importlib, sys
before = set(sys.modules)
tool, argv = sys.argv[1], sys.argv[2:]
code = importlib.import_module(tool).main(argv)
sys.stdout.flush()
print(code, *sorted(set(sys.modules) - before), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[RunningQubesd]:
    yield from serve_installation(tmp_path_factory.mktemp("startup"), watch_loop=False)


def loaded_by(served: RunningQubesd, module: str, *argv: str) -> tuple[str, set[str]]:
    """Run the tool in a fresh interpreter: its output and the modules it loaded."""
    env = {**os.environ, "QUBES_BASE_DIR": str(served.base_dir)}
    done = subprocess.run([sys.executable, "-c", RUN_TOOL, module, *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    code, *modules = done.stderr.split()
    assert code == "0", done.stderr
    return done.stdout, set(modules)


@pytest.mark.parametrize(("module", "argv", "shown"), [
    ("qubes_core.cli.qvm_ls", (), "vm2 "),
    ("qubes_core.cli.qvm_prefs", ("vm1", "label"), "blue\n"),
])
def test_a_tool_loads_only_what_it_uses(served, module, argv, shown):
    out, modules = loaded_by(served, module, *argv)
    assert shown in out
    assert "qubes_core.client.transport" in modules  # it did load the client
    assert not modules & NOT_LOADED, sorted(modules & NOT_LOADED)


def test_a_tool_run_costs_qubesd_no_malformed_call(served):
    """Only the calls themselves reach qubesd: no connection made just to see whether it
    listens (qubesd logs each such as a framing error)."""
    before = served.log_path.read_text(errors="replace").count("framing error")
    out, _ = loaded_by(served, "qubes_core.cli.qvm_ls", "--raw-list")
    assert "vm1" in out.split()
    assert served.log_path.read_text(errors="replace").count("framing error") == before


def test_a_tool_starts_qubesd_for_its_call_when_none_listens(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=1)
    env = {**os.environ, "QUBES_BASE_DIR": str(base)}
    done = subprocess.run([str(Path(sys.executable).parent / "qvm-ls"), "--raw-list"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "vm1" in done.stdout.split()
    assert not listening(base / "run" / "qubesd.sock")  # stopped with the command
