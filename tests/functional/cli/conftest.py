"""A real qubesd (libvirt's test driver, so qubes start and stop) and a runner for the tools.

The installation is made through the Admin API (``admin.vm.Create``), so every qube
has its volumes on disk as a user's would. The tools run through their
console scripts' entry points with ``QUBES_BASE_DIR`` naming the installation, in
this process (an interpreter start per call would dominate the suite's time) or, for
what only a process shows (exit status, a closed pipe), as the installed scripts.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qubes_core.app import Qubes
from qubes_core.client.app import Qubes as ClientQubes
from qubes_core.client.embedded import EmbeddedQubesd
from tests.functional.storage.conftest import loop_filesystem, require_loop_mounts

BIN = Path(sys.executable).parent


@dataclass
class Result:
    """What a tool did: exit code, stdout and stderr as text."""

    code: int
    out: str
    err: str


class Installation:
    """A qubesd serving a base directory, and the tools run against it."""

    def __init__(self, base: Path, daemon: EmbeddedQubesd):
        self.base = base
        self.daemon = daemon
        self.env = {**os.environ, "QUBES_BASE_DIR": str(base)}

    def client(self) -> ClientQubes:
        return ClientQubes(self.base)

    def run(self, tool: str, *args: str, stdin: str | bytes | None = None,
            process: bool = False, timeout: float = 120) -> Result:
        """Run a tool: as its own process (``process``), else its entry point in this
        process with this installation's environment (what the console script runs,
        without paying an interpreter start per call)."""
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        if process:
            done = subprocess.run([str(BIN / tool), *args], input=data, capture_output=True,
                                  env=self.env, timeout=timeout)
            return Result(done.returncode, done.stdout.decode(), done.stderr.decode())
        entry = ENTRY_POINTS[tool].load()
        out, err = io.StringIO(), io.StringIO()
        saved_env, saved_stdin = dict(os.environ), sys.stdin
        os.environ.clear()
        os.environ.update(self.env)
        sys.stdin = io.TextIOWrapper(io.BytesIO(data))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = entry(list(args))
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            sys.stdin = saved_stdin
        return Result(code, out.getvalue(), err.getvalue())


ENTRY_POINTS = {entry.name: entry for entry in importlib.metadata.distribution(
    "qubes_core").entry_points if entry.group == "console_scripts"}


def make_installation(base: Path, runtime: str = "test") -> Installation:
    """dom0, template debian-12, sys-net, sys-firewall (the default netvm) and ``work``,
    created over the API so their volumes exist."""
    base.mkdir(parents=True, exist_ok=True)
    Qubes.create_empty_store(base / "qubes.xml", setup_check="auto").close()
    daemon = EmbeddedQubesd.start(base, runtime=runtime)
    assert daemon is not None
    app = ClientQubes(base)
    app.add_new_vm("TemplateVM", "debian-12", "black")
    app.default_template = "debian-12"
    app.add_new_vm("AppVM", "sys-net", "red")
    app.domains["sys-net"].provides_network = True
    app.domains["sys-net"].netvm = ""
    app.add_new_vm("AppVM", "sys-firewall", "green")
    app.domains["sys-firewall"].provides_network = True
    app.domains["sys-firewall"].netvm = "sys-net"
    app.default_netvm = "sys-firewall"
    app.add_new_vm("AppVM", "work", "blue")
    return Installation(base, daemon)


@pytest.fixture(scope="session")
def reflink_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A loop-mounted XFS (reflinks): volume copies are instant, as on a real dom0 pool."""
    require_loop_mounts("xfs")
    with loop_filesystem("xfs", tmp_path_factory.mktemp("cli-xfs"), 1024 << 20) as mount:
        yield mount


@pytest.fixture
def inst(reflink_dir: Path, tmp_path: Path) -> Iterator[Installation]:
    """A fresh installation served by a qubesd on libvirt's test driver."""
    installation = make_installation(reflink_dir / tmp_path.name)
    yield installation
    installation.daemon.stop()
    shutil.rmtree(installation.base, ignore_errors=True)
