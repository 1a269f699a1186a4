"""An installation served by a real ``qubesd --runtime sandbox``, one per Debian suite.

Each suite's template is built once per test run with ``qubes-template-build`` (its
root file system comes from the cache outside the checkout); tests make their own
VMs, with names of their own, so they do not depend on each other.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import (  # noqa: F401
    bookworm_image,
    keeper_processes,
    leaks_under,
    production_paths_state,
    require_sandbox,
    sandbox_app,
)
from tests.support import wait_until

SUITES = ("bookworm", "trixie")
BIN = Path(sys.executable).parent
_names = itertools.count(1)


class Installation:
    """A base directory, its qubesd process and the tools run against it."""

    def __init__(self, base: Path, suite: str):
        self.base = base
        self.suite = suite
        self.template = f"tpl-{suite}"
        self.qubesd: subprocess.Popen | None = None
        self.env = {**os.environ, "QUBES_BASE_DIR": str(base)}

    # --- qubesd ----------------------------------------------------------------

    def start_qubesd(self) -> None:
        read_end, write_end = os.pipe()
        log = open(self.base.parent / "qubesd.log", "ab")  # noqa: SIM115
        self.qubesd = subprocess.Popen(
            [str(BIN / "qubesd"), "--base-dir", str(self.base), "--runtime", "sandbox",
             "--create", "--ready-fd", str(write_end)],
            pass_fds=[write_end], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        os.close(write_end)
        log.close()
        with os.fdopen(read_end, "rb") as ready:
            if ready.read() != b"ready\n":
                raise RuntimeError(f"qubesd did not start: see {self.base.parent}/qubesd.log")

    def stop_qubesd(self, signum: int = signal.SIGTERM) -> None:
        if self.qubesd is not None:
            self.qubesd.send_signal(signum)
            self.qubesd.wait(60)
            self.qubesd = None

    # --- tools -------------------------------------------------------------------

    def client(self) -> Any:
        from qubes_core.client.app import Qubes

        return Qubes(self.base)

    def call(self, method: str, dest: str = "dom0", arg: str = "", payload: str = "") -> str:
        with self.client() as app:
            return app.call(method, dest, arg, payload)

    def state(self, vm: str) -> str:
        for line in self.call("admin.vm.List").splitlines():
            name, *fields = line.split()
            if name == vm:
                return dict(f.split("=", 1) for f in fields)["state"]
        return "Absent"

    def names(self) -> list[str]:
        return [line.split()[0] for line in self.call("admin.vm.List").splitlines()]

    def new_appvm(self, prefix: str = "vm", **props: str) -> str:
        name = f"{prefix}{next(_names)}"
        self.call("admin.vm.Create.AppVM", "dom0", self.template,
                  f"name={name} label=red")
        for key, value in props.items():
            self.call("admin.vm.property.Set", name, key, value)
        return name

    def vm_for_faults(self) -> str:
        """One AppVM the fault tests share (made on first use)."""
        if not hasattr(self, "_fault_vm"):
            self._fault_vm = self.new_appvm("faults")
        return self._fault_vm

    def qvm_run(self, *args: str, input: bytes | None = None, timeout: float = 120
                ) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "qvm-run"), *args], input=input, env=self.env,
                              capture_output=True, timeout=timeout, check=False)

    def sh(self, vm: str, command: str, user: str | None = None) -> str:
        """Run ``command`` in ``vm``; its stdout (fails the test on a non-zero exit)."""
        result = self.qvm_run("-p", *(["-u", user] if user else []), vm, command)
        assert result.returncode == 0, (result.returncode, result.stderr.decode())
        return result.stdout.decode()

    def policy(self, name: str, text: str) -> None:
        path = self.base / "etc/qubes/policy.d" / f"{name}.policy"
        path.write_text(text, encoding="utf-8")

    def record(self, vm: str) -> dict[str, Any]:
        uuid = self.call("admin.vm.property.Get", vm, "uuid").split()[-1]
        path = self.base / "run/sandbox" / uuid / "vm.json"
        return json.loads(path.read_text())

    def wait_state(self, vm: str, state: str) -> None:
        """Wait until ``vm`` is in ``state`` (it may change without us)."""
        wait_until(lambda: self.state(vm) == state, what=f"{vm} {state}")


@pytest.fixture(scope="session", params=SUITES)
def installation(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Installation]:
    """A running qubesd with a template of the suite, built by qubes-template-build."""
    require_sandbox()
    suite = request.param
    base = tmp_path_factory.mktemp(f"inst-{suite}") / "base"
    outside = production_paths_state()
    inst = Installation(base, suite)
    inst.start_qubesd()
    try:
        build = subprocess.run([str(BIN / "qubes-template-build"), "--base-dir", str(base),
                                "--suite", suite, inst.template], env=inst.env,
                               capture_output=True, timeout=1800, check=False)
        assert build.returncode == 0, build.stderr.decode()
        yield inst
        for name in inst.names():
            if name != "dom0" and inst.state(name) != "Halted":
                inst.call("admin.vm.Kill", name)
    finally:
        inst.stop_qubesd()
    assert leaks_under(base) == []
    assert keeper_processes(base, servers=True) == []  # qubesd's stop ended its server
    assert production_paths_state() == outside  # nothing written outside the base
