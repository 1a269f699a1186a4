"""The clockvm policy file following the model, register_argument, the explain command."""

from __future__ import annotations

from pathlib import Path

import pytest

from qubes_core import exc
from qubes_core.api.registry import all_methods
from qubes_core.paths import Paths
from qubes_core.policy import ModelSystem, Policy, Request
from qubes_core.policy.explain import main as explain_main
from qubes_core.policy.install import install
from qubes_core.policy.register import register_argument


def _getdate(app, paths: Paths, source: str = "work"):
    policy = Policy.load(paths.policy_dir, paths.rpc_dir / "policy")
    return policy.evaluate(Request("qubes.GetDate", "", source, "@default"), ModelSystem(app))


def test_getdate_policy_follows_clockvm(basic_app) -> None:
    app = basic_app
    paths = Paths(app.base_dir)
    clock_file = paths.policy_dir / "50-clockvm.policy"
    app.clockvm = app.domains["sys-net"]
    assert not clock_file.exists()  # no policy installed yet: nothing written
    install(all_methods(), paths)
    app.clockvm = app.domains["sys-firewall"]
    decision = _getdate(app, paths)
    assert (decision.action, decision.target) == ("allow", "sys-firewall")
    app.clockvm = app.domains["sys-net"]
    assert _getdate(app, paths).target == "sys-net"
    del app.clockvm
    assert not clock_file.exists()
    assert not _getdate(app, paths).allowed


def test_register_argument_is_exclusive(tmp_path: Path) -> None:
    path = register_argument(tmp_path, "backend", "frontend", "qubes.Svc", b"arg-1.x")
    assert path.name == "qubes.Svc+arg-1.x"
    assert path.read_text().splitlines()[-1] == "frontend backend allow"
    with pytest.raises(exc.QubesException, match="already exists"):
        register_argument(tmp_path, "evil", "frontend", "qubes.Svc", b"arg-1.x")
    assert path.read_text().splitlines()[-1] == "frontend backend allow"
    for service, arg in (("qubes.Svc", b""), ("qubes.Svc", b"a/b"), ("qubes.Svc", b"a\n"),
                         ("qubes.Svc", b"x" * 65), ("../x", b"a"), ("a+b", b"c")):
        with pytest.raises(exc.QubesValueError):
            register_argument(tmp_path, "backend", "frontend", service, arg)
    assert [p.name for p in tmp_path.iterdir()] == ["qubes.Svc+arg-1.x"]


def test_explain_command(basic_app, capsys: pytest.CaptureFixture[str]) -> None:
    app = basic_app
    app.save()
    paths = Paths(app.base_dir)
    install(all_methods(), paths)
    (paths.policy_dir / "30-user.policy").write_text(
        "qubes.Filecopy * work sys-net deny\n"
        "qubes.Filecopy * @anyvm @anyvm ask default_target=sys-net\n")
    base = ["--base-dir", str(app.base_dir)]
    assert explain_main([*base, "--trace", "work", "sys-firewall", "qubes.Filecopy"]) == 1
    out = capsys.readouterr().out
    assert "skipped " in out and "30-user.policy:1" in out
    assert "decision: ask" in out and "30-user.policy:2" in out
    assert "default target: sys-net" in out
    assert explain_main([*base, "work", "dom0", "admin.vm.List"]) == 1
    assert "no rule matched" in capsys.readouterr().out
    (paths.policy_dir / "include" / "admin-global-ro").write_text(
        "work @adminvm allow target=dom0\n")
    assert explain_main([*base, "work", "dom0", "admin.vm.List"]) == 0
    out = capsys.readouterr().out
    assert "include/admin-global-ro:1" in out and "target: dom0" in out
    (paths.policy_dir / "30-user.policy").write_text("broken line\n")
    assert explain_main([*base, "work", "dom0", "admin.vm.List"]) == 2
    assert "30-user.policy:1" in capsys.readouterr().out
