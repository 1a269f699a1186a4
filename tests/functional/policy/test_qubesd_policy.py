"""The generated policy inside a real qubesd process: Admin API calls from VMs,
edits applied without a restart, GetDate following clockvm, policy.RegisterArgument."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qubes_core import exc
from qubes_core.api.registry import all_methods
from qubes_core.app import Qubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.client.transport import QubesDaemonNoResponseError, Transport
from qubes_core.paths import Paths, resolve
from qubes_core.policy import ModelSystem, Policy, Request
from qubes_core.policy.install import check
from tests.requirements import require_tool
from tests.support import wait_until


class Daemon:
    def __init__(self, base: Path):
        self.base = base
        self.paths: Paths = resolve(base)
        self.process = EmbeddedQubesd.start(base, runtime="offline")
        assert self.process is not None

    def admin(self, src: str = "dom0") -> Transport:
        return Transport(self.paths.admin_socket, src=src)

    def misc(self, src: str) -> Transport:
        return Transport(self.paths.misc_socket, src=src)

    def grant(self, include: str, line: str) -> None:
        path = self.paths.policy_dir / "include" / include
        path.write_text(path.read_text() + line + "\n")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    base = tmp_path / "inst"
    base.mkdir()
    app = Qubes.create_empty_store(base / "qubes.xml", setup_check="auto")
    try:
        app.default_template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
        for name in ("mgmt", "work", "vault"):
            app.add_new_vm("AppVM", name=name, label="blue")
        app.save()
    finally:
        app.close()
    running = Daemon(base)
    yield running
    running.process.stop()


def _label(daemon: Daemon, src: str, vm: str) -> str:
    return daemon.admin(src).call_text("admin.vm.property.Get", vm, "label")


def _refused(call: Callable[[], object]) -> bool:
    try:
        call()
    except QubesDaemonNoResponseError:
        return True
    return False


def test_admin_call_from_vm_by_generated_local_ro_include(daemon: Daemon) -> None:
    # qubesd generated and installed the policy at start, matching the registry.
    assert check(all_methods(), daemon.paths) == []
    assert _refused(lambda: _label(daemon, "work", "work"))  # nothing granted yet

    daemon.grant("admin-local-ro", "work work allow target=dom0")
    wait_until(lambda: not _refused(lambda: _label(daemon, "work", "work")),
               what="the grant in force")
    assert _label(daemon, "work", "work").endswith("blue")
    all_props = daemon.admin("work").call_text("admin.vm.property.GetAll", "work")
    assert "label" in all_props

    # writes (admin-local-rwx) and other VMs stay refused
    assert _refused(lambda: daemon.admin("work").call(
        "admin.vm.property.Set", "work", "label", b"red"))
    assert _label(daemon, "dom0", "work").endswith("blue")
    assert _refused(lambda: _label(daemon, "work", "vault"))
    assert _refused(lambda: daemon.admin("work").call("admin.vm.List", "dom0"))
    assert _refused(lambda: _label(daemon, "vault", "work"))


def test_listing_is_filtered_to_what_the_policy_allows(daemon: Daemon) -> None:
    daemon.grant("admin-global-ro", "mgmt @adminvm allow target=dom0")
    daemon.grant("admin-global-ro", "mgmt work allow target=dom0")
    wait_until(lambda: not _refused(lambda: daemon.admin("mgmt").call("admin.vm.List", "dom0")),
               what="the grant in force")
    names = {line.split()[0] for line in
             daemon.admin("mgmt").call_text("admin.vm.List", "dom0").splitlines()}
    assert names == {"dom0", "work"}
    full = {line.split()[0] for line in
            daemon.admin().call_text("admin.vm.List", "dom0").splitlines()}
    assert full == {"dom0", "debian-12", "mgmt", "work", "vault"}


def test_broken_edit_denies_until_fixed(daemon: Daemon) -> None:
    daemon.grant("admin-local-ro", "work work allow target=dom0")
    wait_until(lambda: not _refused(lambda: _label(daemon, "work", "work")),
               what="the grant in force")
    user = daemon.paths.policy_dir / "30-user.policy"
    user.write_text("admin.vm.List * work @adminvm allow target=dom0 oops\n")
    wait_until(lambda: _refused(lambda: _label(daemon, "work", "work")),
               what="the broken policy in force")
    user.write_text("# fixed\n")
    wait_until(lambda: not _refused(lambda: _label(daemon, "work", "work")),
               what="the grant in force")


def test_getdate_follows_clockvm(daemon: Daemon) -> None:
    clock_file = daemon.paths.policy_dir / "50-clockvm.policy"
    assert not clock_file.exists()

    def getdate_target() -> str | None:
        with Qubes(daemon.paths.qubes_xml, lock=False) as app:
            policy = Policy.load(daemon.paths.policy_dir, daemon.paths.rpc_dir / "policy")
            decision = policy.evaluate(Request("qubes.GetDate", "", "work", "@default"),
                                       ModelSystem(app))
        return decision.target if decision.allowed else None

    assert getdate_target() is None  # no clockvm: VMs asking no one get nothing
    daemon.admin().call("admin.property.Set", "dom0", "clockvm", b"vault")
    assert "target=vault" in clock_file.read_text()
    assert getdate_target() == "vault"
    daemon.admin().call("admin.property.Set", "dom0", "clockvm", b"mgmt")
    assert getdate_target() == "mgmt"
    daemon.admin().call("admin.property.Reset", "dom0", "clockvm")
    assert not clock_file.exists()
    assert getdate_target() is None


def test_register_argument(daemon: Daemon) -> None:
    legacy = daemon.paths.rpc_dir / "policy"

    def register(payload: bytes, backend: str = "vault") -> bytes:
        return daemon.misc(backend).call("policy.RegisterArgument", "work", "qubes.Gpg",
                                         payload)

    # denied by the generated default policy
    assert _refused(lambda: register(b"key1"))
    assert not (legacy / "qubes.Gpg+key1").exists()

    (daemon.paths.policy_dir / "30-user.policy").write_text(
        "policy.RegisterArgument +qubes.Gpg vault @anyvm allow target=dom0\n")
    wait_until(lambda: not _refused(lambda: register(b"key1")), what="the grant in force")
    assert (legacy / "qubes.Gpg+key1").read_text().splitlines()[-1] == "work vault allow"
    with Qubes(daemon.paths.qubes_xml, lock=False) as app:
        policy = Policy.load(daemon.paths.policy_dir, legacy)
        system = ModelSystem(app)
        assert policy.evaluate(Request("qubes.Gpg", "key1", "work", "vault"), system).allowed
        assert not policy.evaluate(Request("qubes.Gpg", "key1", "mgmt", "vault"),
                                   system).allowed
        assert not policy.evaluate(Request("qubes.Gpg", "key2", "work", "vault"),
                                   system).allowed

    # never overwritten; bad arguments change nothing
    before = (legacy / "qubes.Gpg+key1").read_text()
    with pytest.raises(exc.QubesException, match="already exists"):
        register(b"key1")
    assert (legacy / "qubes.Gpg+key1").read_text() == before
    for bad in (b"a b", b"../x", b"\xff", b"key\n"):
        with pytest.raises(exc.QubesValueError, match="1 to 64 bytes"):
            register(bad)
    with pytest.raises(exc.ProtocolError, match="longer than 64 bytes"):
        register(b"x" * 65)
    assert sorted(p.name for p in legacy.iterdir()) == ["qubes.Gpg+key1"]
    assert _refused(lambda: register(b"key3", backend="mgmt"))  # not granted to mgmt


def test_rpc_scripts_relay_vm_facing_calls(daemon: Daemon) -> None:
    """dom0's qubes-rpc entries for VM-facing methods reach qubesd's misc socket."""
    require_tool("socat")

    def run(service: str, source: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "QREXEC_REMOTE_DOMAIN": source, "QREXEC_SERVICE_FULL_NAME": service}
        return subprocess.run([str(daemon.paths.rpc_dir / service)], input=stdin, env=env,
                              capture_output=True, timeout=30, check=False)

    date = run("qubes.GetDate", "work", b"")
    assert date.returncode == 0, date.stderr
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n", date.stdout)
    assert run("qubes.NotifyUpdates", "debian-12", b"3").returncode == 0
    assert daemon.admin().call_text("admin.vm.feature.Get", "debian-12",
                                    "updates-available") == "1"
    bad = run("qubes.NotifyUpdates", "debian-12", b"many")
    assert bad.returncode != 0
