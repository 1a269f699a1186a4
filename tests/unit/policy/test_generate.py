"""The generated policy and rpc entries against the method registry, and their check."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from qubes_core.api.registry import all_methods
from qubes_core.paths import Paths
from qubes_core.policy import DomainInfo, FixedSystem, Policy, Request
from qubes_core.policy.generate import GROUPS
from qubes_core.policy.install import check, install
from qubes_core.policy.install import main as install_main

SYSTEM = FixedSystem([
    DomainInfo("dom0", "AdminVM"), DomainInfo("mgmt", "AppVM"),
    DomainInfo("work", "AppVM", frozenset({"managed"})), DomainInfo("vault", "AppVM"),
])


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path)


def test_registry_install_is_complete(paths: Paths) -> None:
    """The check the issue asks for: one policy line and one rpc entry per method."""
    methods = all_methods()
    install(methods, paths)
    assert check(methods, paths) == []
    text = (paths.policy_dir / "90-admin-default.policy").read_text()
    for spec in methods:
        entry = paths.rpc_dir / spec.name
        if spec.socket == "admin":
            assert text.count(f" {spec.name} ") == 1
            assert f"include/{spec.policy_group}" in text.split(f" {spec.name} ")[1] \
                .splitlines()[0]
            assert os.readlink(entry) == str(paths.admin_socket)
        elif spec.socket == "misc":
            assert os.access(entry, os.X_OK)
            assert str(paths.misc_socket) in entry.read_text()
        else:
            assert not entry.exists()
    for group in GROUPS:
        assert (paths.policy_dir / "include" / group).is_file()


def test_install_is_idempotent_and_keeps_the_admins_includes(paths: Paths) -> None:
    methods = all_methods()
    assert install(methods, paths)
    assert install(methods, paths) == []
    grant = paths.policy_dir / "include" / "admin-local-ro"
    grant.write_text("mgmt @anyvm allow target=dom0\n")
    assert install(methods, paths) == []
    assert grant.read_text() == "mgmt @anyvm allow target=dom0\n"
    generated = paths.policy_dir / "90-admin-default.policy"
    generated.write_text("# edited by hand\n")
    assert install(methods, paths) == [f"wrote {generated}"]
    assert check(methods, paths) == []


def test_stale_entries_are_removed_and_reported(paths: Paths) -> None:
    methods = all_methods()
    install(methods, paths, legacy=True)
    gone = next(m for m in methods if m.socket == "admin")
    fewer = [m for m in methods if m is not gone]
    # The registry lost a method: the check finds what is left of it ...
    problems = check(fewer, paths)
    assert any(f"policy line for {gone.name}, which is not" in p for p in problems)
    assert any(f"installed for {gone.name}, which is not a method" in p for p in problems)
    assert any(f"legacy policy for {gone.name}" in p for p in problems)
    # ... and installing removes it.
    changes = install(fewer, paths, legacy=True)
    assert f"removed {paths.rpc_dir / gone.name}" in changes
    assert check(fewer, paths) == []
    # A user's own rpc service and legacy policy file are not ours: untouched.
    (paths.rpc_dir / "my.Service").write_text("#!/bin/sh\necho hi\n")
    (paths.rpc_dir / "policy" / "my.Service").write_text("work vault allow\n")
    assert install(fewer, paths, legacy=True) == []
    assert check(fewer, paths) == []


def test_check_finds_drift(paths: Paths) -> None:
    methods = all_methods()
    install(methods, paths)
    admin = [m for m in methods if m.socket == "admin"]
    policy_file = paths.policy_dir / "90-admin-default.policy"
    lines = policy_file.read_text().splitlines()
    # a duplicated line, a missing line, a wrong include, a line for no method
    dup = next(line for line in lines if f" {admin[0].name} " in line)
    missing = next(line for line in lines if f" {admin[1].name} " in line)
    lines.remove(missing)
    lines.append(dup)
    lines.append("!include-service admin.vm.DoesNotExist * include/admin-local-ro")
    wrong = next(i for i, line in enumerate(lines) if f" {admin[2].name} " in line)
    other = "admin-global-rwx" if admin[2].policy_group != "admin-global-rwx" \
        else "admin-local-ro"
    lines[wrong] = f"!include-service {admin[2].name} * include/{other}"
    policy_file.write_text("\n".join(lines) + "\n")
    (paths.rpc_dir / admin[3].name).unlink()
    internal = next(m for m in methods if m.socket == "internal")
    os.symlink(paths.internal_socket, paths.rpc_dir / internal.name)
    problems = "\n".join(check(methods, paths))
    assert f"{admin[0].name}: 2 policy lines, expected 1" in problems
    assert f"{admin[1].name}: 0 policy lines, expected 1" in problems
    assert f"{admin[2].name} includes include/{other}" in problems
    assert "admin.vm.DoesNotExist, which is not an Admin API method" in problems
    assert f"{admin[3].name}: missing" in problems
    assert f"{internal.name} is not served over qrexec" in problems


def test_generated_policy_grants_by_classification(paths: Paths) -> None:
    methods = all_methods()
    install(methods, paths)
    include = paths.policy_dir / "include"
    (include / "admin-local-ro").write_text(
        (include / "admin-local-ro").read_text() + "mgmt @tag:managed allow target=dom0\n")
    policy = Policy.load(paths.policy_dir, paths.rpc_dir / "policy")

    def decide(spec, target: str, source: str = "mgmt"):
        return policy.evaluate(Request(spec.name, "x", source, target), SYSTEM)

    for spec in methods:
        if spec.socket != "admin":
            continue
        decision = decide(spec, "work")
        expected = spec.policy_group == "admin-local-ro"
        assert decision.allowed == expected, spec.name
        if expected:
            assert decision.target == "dom0"
        assert not decide(spec, "vault").allowed
        assert not decide(spec, "work", source="work").allowed


def test_one_grant_in_global_rwx_covers_every_method(paths: Paths) -> None:
    """The full-access form, new format: the lines in include/admin-global-rwx."""
    methods = all_methods()
    install(methods, paths)
    rwx = paths.policy_dir / "include" / "admin-global-rwx"
    rwx.write_text(rwx.read_text() + "mgmt @anyvm allow target=dom0\n"
                   "mgmt @adminvm allow target=dom0\n")
    policy = Policy.load(paths.policy_dir)
    for spec in (m for m in methods if m.socket == "admin"):
        for target in ("work", "vault", "dom0"):
            decision = policy.evaluate(Request(spec.name, "", "mgmt", target), SYSTEM)
            assert decision.allowed and decision.target == "dom0", (spec.name, target)
        assert not policy.evaluate(Request(spec.name, "", "work", "dom0"), SYSTEM).allowed


def test_legacy_form_with_include_lines(paths: Paths) -> None:
    """The 4.0 form: each qubes-rpc/policy/METHOD holds one $include: line."""
    methods = all_methods()
    install(methods, paths, legacy=True)
    legacy = paths.rpc_dir / "policy"
    admin = [m for m in methods if m.socket == "admin"]
    for spec in admin:
        body = [line for line in (legacy / spec.name).read_text().splitlines()
                if not line.startswith("#")]
        assert body == [f"$include:include/{spec.policy_group}"]
    (legacy / "include" / "admin-global-rwx").write_text(
        "mgmt $anyvm allow,target=dom0\nmgmt $adminvm allow,target=dom0\n")
    policy = Policy.load(paths.policy_dir, legacy)
    for spec in admin:
        for target in ("work", "dom0"):
            decision = policy.evaluate(Request(spec.name, "", "mgmt", target), SYSTEM)
            assert decision.allowed and decision.rule.path.parent.name == "include", \
                (spec.name, target)
    assert check(methods, paths) == []


def test_vm_facing_defaults(paths: Paths) -> None:
    methods = all_methods()
    install(methods, paths)
    policy = Policy.load(paths.policy_dir, paths.rpc_dir / "policy")
    facing = [m for m in methods if m.socket == "misc"]
    assert facing
    for spec in facing:
        decision = policy.evaluate(Request(spec.name, "", "work", "dom0"), SYSTEM)
        if spec.name == "policy.RegisterArgument":
            assert not decision.allowed
        else:
            assert decision.allowed and decision.target == "dom0", spec.name
    # the register call names the frontend as target: still denied by default
    assert not policy.evaluate(Request("policy.RegisterArgument", "qubes.Gpg", "work",
                                       "vault"), SYSTEM).allowed


def test_registry_method_without_classification_is_refused() -> None:
    from qubes_core.api.registry import method

    with pytest.raises(ValueError, match="declare at least one of read, write, execute"):
        method("admin.test.Nothing", scope="local")


def test_install_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install_main(["--base-dir", str(tmp_path)]) == 0
    assert "change(s)" in capsys.readouterr().out
    assert install_main(["--base-dir", str(tmp_path), "--check"]) == 0
    (Paths(tmp_path).rpc_dir / "admin.vm.Bogus").symlink_to(Paths(tmp_path).admin_socket)
    assert install_main(["--base-dir", str(tmp_path), "--check"]) == 1
    assert "admin.vm.Bogus, which is not a method" in capsys.readouterr().err


def test_spec_changes_show_in_the_generated_lines(paths: Paths) -> None:
    """Reclassifying a method moves it to another include (nothing is listed by hand)."""
    methods = all_methods()
    spec = next(m for m in methods if m.socket == "admin" and not m.write and not m.execute)
    changed = dataclasses.replace(spec, write=True)
    others = [m for m in methods if m is not spec]
    install([*others, changed], paths)
    text = (paths.policy_dir / "90-admin-default.policy").read_text()
    line = next(line for line in text.splitlines() if f" {spec.name} " in line)
    assert line.endswith(f"include/admin-{spec.scope}-rwx")
    assert check([*others, changed], paths) == []
    assert check(methods, paths) != []


def test_default_action_and_quiet_deny_come_from_the_declaration(paths: Paths) -> None:
    """A VM-facing method declared deny is denied, and a quiet-deny declaration silences
    the notice for exactly that method (no list of names outside the registry)."""
    methods = all_methods()
    facing = next(m for m in methods if m.socket == "misc" and m.default_action == "allow")
    listing = next(m for m in methods if m.socket == "admin" and not m.quiet_deny)
    changed = [dataclasses.replace(facing, default_action="deny"),
               dataclasses.replace(listing, quiet_deny=True)]
    others = [m for m in methods if m not in (facing, listing)]
    install([*others, *changed], paths)
    policy = Policy.load(paths.policy_dir, paths.rpc_dir / "policy")
    assert not policy.evaluate(Request(facing.name, "", "work", "dom0"), SYSTEM).allowed
    quiet = policy.evaluate(Request(listing.name, "", "work", "dom0"), SYSTEM)
    assert not quiet.allowed and not quiet.notify
    quiet_names = {m.name for m in methods if m.quiet_deny}
    assert quiet_names >= {"admin.vm.property.GetAll", "admin.property.GetAll"}
    text = (paths.policy_dir / "91-admin-default-deny.policy").read_text()
    assert {line.split()[0] for line in text.splitlines()
            if line and not line.startswith("#")} == quiet_names | {listing.name}


def test_registry_refuses_a_default_action_it_cannot_apply() -> None:
    from qubes_core.api.registry import method

    with pytest.raises(ValueError, match="default_action must be one of"):
        method("qubes.TestNothing", scope="local", read=True, vm_facing=True,
               default_action="ask")
    with pytest.raises(ValueError, match="only applies to a method VMs call"):
        method("admin.test.Nothing", scope="local", read=True, default_action="deny")
