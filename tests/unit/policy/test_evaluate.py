"""Policy evaluation against a table of requests, on a fixed system and on the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from qubes_core.policy import DomainInfo, FixedSystem, ModelSystem, Policy, Request

SYSTEM = FixedSystem([
    DomainInfo("dom0", "AdminVM", frozenset({"admin-tag"})),
    DomainInfo("work", "AppVM", frozenset({"personal"}), default_dispvm="dvm"),
    DomainInfo("vault", "AppVM", frozenset({"secret"})),
    DomainInfo("mgmt", "AppVM"),
    DomainInfo("nodisp", "AppVM"),
    DomainInfo("dvm", "AppVM", frozenset({"dvmtag"}), default_dispvm="dvm",
               template_for_dispvms=True),
    DomainInfo("other-dvm", "AppVM", template_for_dispvms=True),
    DomainInfo("disp12", "DispVM", default_dispvm="dvm", dispvm_template="dvm"),
    DomainInfo("debian-12", "TemplateVM"),
    DomainInfo("sys-net", "AppVM", frozenset({"net"})),
])

POLICY = """\
# comments and blank lines are ignored

qubes.Filecopy  *        work       vault       deny
qubes.Filecopy  *        work       @anyvm      ask default_target=sys-net
qubes.Filecopy  *        @tag:secret @anyvm     deny notify=no
qubes.OpenURL   *        @anyvm     @dispvm     allow
qubes.OpenURL   *        @anyvm     @dispvm:other-dvm allow
qubes.OpenInVM  *        @anyvm     @default    allow target=@dispvm
qubes.StartApp  +firefox @anyvm     @dispvm:@tag:dvmtag allow
qubes.StartApp  +        @anyvm     @anyvm      deny
qubes.StartApp  *        @type:TemplateVM @anyvm allow user=root autostart=no
qubes.VMShell   *        @dispvm:dvm @anyvm     allow target=sys-net
qubes.VMShell   *        @dispvm:@tag:dvmtag vault allow
qubes.GetDate   *        @anyvm     @anyvm      allow target=sys-net
qubes.GetDate   *        @anyvm     @adminvm    allow target=sys-net
admin.vm.List   *        mgmt       @adminvm    allow target=dom0
admin.vm.List   *        @anyvm     dom0        deny
qubes.Tags      *        @tag:personal @tag:net allow
qubes.Tags      *        dom0       @tag:secret allow
qubes.Ask       *        work       @tag:net    ask
qubes.Ask       *        work       @default    ask
*               *        @adminvm   @anyvm      allow user=root
"""

CASES = [
    # service+arg, source, target -> action, resolved target (or None)
    ("qubes.Filecopy", "work", "vault", "deny", None),
    ("qubes.Filecopy", "work", "sys-net", "ask", None),
    ("qubes.Filecopy", "vault", "work", "deny", None),
    ("qubes.Filecopy", "mgmt", "work", "deny", None),  # no rule: default deny
    ("qubes.Filecopy", "ghost", "work", "deny", None),  # unknown source
    ("qubes.Filecopy", "work", "ghost", "deny", None),  # unknown target
    ("qubes.OpenURL", "work", "@dispvm", "allow", "@dispvm:dvm"),
    ("qubes.OpenURL", "nodisp", "@dispvm", "deny", None),  # no default_dispvm
    ("qubes.OpenURL", "work", "@dispvm:dvm", "allow", "@dispvm:dvm"),  # the default one
    ("qubes.OpenURL", "work", "@dispvm:other-dvm", "allow", "@dispvm:other-dvm"),
    ("qubes.OpenURL", "work", "@dispvm:vault", "deny", None),  # not a DispVM template
    ("qubes.OpenURL", "work", "vault", "deny", None),
    ("qubes.OpenInVM", "work", "", "allow", "@dispvm:dvm"),
    ("qubes.OpenInVM", "work", "@default", "allow", "@dispvm:dvm"),
    ("qubes.OpenInVM", "work", "vault", "deny", None),
    ("qubes.StartApp+firefox", "work", "@dispvm:dvm", "allow", "@dispvm:dvm"),
    ("qubes.StartApp+firefox", "work", "@dispvm:other-dvm", "deny", None),
    ("qubes.StartApp", "debian-12", "work", "deny", None),  # empty argument: "+" rule
    ("qubes.StartApp+xterm", "debian-12", "work", "allow", "work"),
    ("qubes.StartApp+xterm", "work", "vault", "deny", None),
    ("qubes.VMShell", "disp12", "work", "allow", "sys-net"),
    ("qubes.VMShell", "work", "vault", "deny", None),
    ("qubes.GetDate", "work", "@default", "allow", "sys-net"),
    ("qubes.GetDate", "vault", "dom0", "allow", "sys-net"),
    ("admin.vm.List", "mgmt", "dom0", "allow", "dom0"),
    ("admin.vm.List", "mgmt", "@adminvm", "allow", "dom0"),
    ("admin.vm.List", "work", "dom0", "deny", None),
    ("admin.vm.List", "mgmt", "work", "deny", None),
    ("qubes.Tags", "work", "sys-net", "allow", "sys-net"),
    ("qubes.Tags", "work", "vault", "deny", None),
    ("qubes.Tags", "dom0", "vault", "allow", "vault"),
    ("qubes.Tags", "mgmt", "sys-net", "deny", None),
    ("qubes.Anything", "dom0", "work", "allow", "work"),
    ("qubes.Anything", "dom0", "dom0", "deny", None),  # @anyvm never covers dom0
    ("qubes.Anything", "work", "vault", "deny", None),
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    directory = tmp_path_factory.mktemp("policy.d")
    (directory / "30-test.policy").write_text(POLICY)
    return Policy.load(directory)


@pytest.mark.parametrize(("call", "source", "target", "action", "resolved"), CASES)
def test_decision_table(policy: Policy, call: str, source: str, target: str, action: str,
                        resolved: str | None) -> None:
    decision = policy.evaluate(Request.parse(call, source, target), SYSTEM)
    assert decision.action == action, decision.reason
    assert decision.target == resolved


def test_decision_names_the_rule(policy: Policy) -> None:
    decision = policy.evaluate(Request.parse("qubes.Filecopy", "work", "vault"), SYSTEM)
    assert decision.rule is not None
    assert decision.rule.lineno == 3
    assert decision.rule.path.name == "30-test.policy"
    assert "30-test.policy:3" in decision.reason
    assert decision.notify is True  # deny notifies unless told otherwise
    quiet = policy.evaluate(Request.parse("qubes.Filecopy", "vault", "work"), SYSTEM)
    assert quiet.notify is False


def test_allow_parameters(policy: Policy) -> None:
    decision = policy.evaluate(Request.parse("qubes.StartApp+x", "debian-12", "work"), SYSTEM)
    assert (decision.user, decision.autostart) == ("root", False)
    decision = policy.evaluate(Request.parse("qubes.Anything", "dom0", "vault"), SYSTEM)
    assert (decision.user, decision.autostart) == ("root", True)


def test_ask_offers_the_targets_the_rule_covers(policy: Policy) -> None:
    decision = policy.evaluate(Request.parse("qubes.Filecopy", "work", "sys-net"), SYSTEM)
    assert decision.action == "ask"
    assert "work" not in decision.targets_for_ask  # never the caller itself
    assert "dom0" not in decision.targets_for_ask
    assert {"vault", "sys-net", "@dispvm:dvm"} <= set(decision.targets_for_ask)
    assert decision.default_target == "sys-net"
    tagged = policy.evaluate(Request.parse("qubes.Ask", "work", "sys-net"), SYSTEM)
    assert tagged.targets_for_ask == ["sys-net"]
    assert tagged.default_target == "sys-net"
    # @default as the only target covers no qube: nothing to offer, so deny.
    nothing = policy.evaluate(Request.parse("qubes.Ask", "work", "@default"), SYSTEM)
    assert nothing.action == "deny"


def test_first_match_wins_across_files_in_c_order(tmp_path: Path) -> None:
    (tmp_path / "50-b.policy").write_text("qubes.X * work vault allow\n")
    (tmp_path / "10-a.policy").write_text("qubes.X * work vault deny\n")
    (tmp_path / "10-B.policy~").write_text("garbage that is not read\n")
    (tmp_path / ".20-swap.policy").write_text("garbage that is not read\n")
    policy = Policy.load(tmp_path)
    decision = policy.evaluate(Request.parse("qubes.X", "work", "vault"), SYSTEM)
    assert decision.action == "deny"
    assert decision.rule.path.name == "10-a.policy"
    (tmp_path / "10-a.policy").unlink()
    assert Policy.load(tmp_path).evaluate(
        Request.parse("qubes.X", "work", "vault"), SYSTEM).action == "allow"


def test_includes(tmp_path: Path) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "extra").mkdir()
    (tmp_path / "30-main.policy").write_text(
        "!include include/first\n"
        "!include-dir extra\n"
        "!include-service admin.vm.List * include/service-rules\n"
        "!include-service qubes.Arg +one include/arg-rules\n"
    )
    (tmp_path / "include" / "first").write_text("qubes.A * work vault allow\n")
    (tmp_path / "extra" / "10-x.policy").write_text("qubes.B * work vault allow\n")
    (tmp_path / "extra" / "README").write_text("not a policy file: ignored\n")
    (tmp_path / "include" / "service-rules").write_text(
        "$include:include/more-rules\nwork $adminvm allow,target=dom0\n")
    (tmp_path / "include" / "more-rules").write_text("$tag:secret $anyvm deny\n")
    (tmp_path / "include" / "arg-rules").write_text("@anyvm @anyvm allow\n")
    policy = Policy.load(tmp_path)

    def action(call: str, source: str, target: str) -> str:
        return policy.evaluate(Request.parse(call, source, target), SYSTEM).action

    assert action("qubes.A", "work", "vault") == "allow"
    assert action("qubes.B", "work", "vault") == "allow"
    assert action("admin.vm.List", "work", "dom0") == "allow"
    assert action("admin.vm.List", "vault", "work") == "deny"
    assert action("admin.vm.List", "mgmt", "dom0") == "deny"
    assert action("qubes.Arg+one", "mgmt", "work") == "allow"
    assert action("qubes.Arg+two", "mgmt", "work") == "deny"
    rule = policy.evaluate(Request.parse("admin.vm.List", "vault", "work"), SYSTEM).rule
    assert (rule.path.name, rule.lineno, rule.service) == ("more-rules", 1, "admin.vm.List")


def test_legacy_per_service_files(tmp_path: Path) -> None:
    """The 4.0 format under qubes-rpc/policy, read through !compat-4.0."""
    policy_dir, legacy = tmp_path / "policy.d", tmp_path / "policy"
    policy_dir.mkdir()
    legacy.mkdir()
    (policy_dir / "35-compat.policy").write_text("!compat-4.0\n")
    (policy_dir / "90-default.policy").write_text("qubes.Legacy * @anyvm @anyvm allow\n")
    (legacy / "include").mkdir()
    (legacy / "include" / "admin-local-ro").write_text("mgmt $anyvm allow,target=dom0\n")
    (legacy / "admin.vm.property.Get").write_text(
        "## a comment\n$include:include/admin-local-ro\n$anyvm $anyvm deny\n")
    (legacy / "qubes.Legacy+secret").write_text("work $tag:secret allow\n")
    (legacy / "qubes.Legacy+secret~").write_text("editor backup: ignored\n")
    policy = Policy.load(policy_dir, legacy)

    def decide(call: str, source: str, target: str):
        return policy.evaluate(Request.parse(call, source, target), SYSTEM)

    allowed = decide("admin.vm.property.Get+netvm", "mgmt", "work")
    assert (allowed.action, allowed.target) == ("allow", "dom0")
    assert decide("admin.vm.property.Get+netvm", "work", "vault").action == "deny"
    assert decide("qubes.Legacy+secret", "work", "vault").action == "allow"
    # a +ARG file ends in an implicit deny that shadows the default policy
    assert decide("qubes.Legacy+secret", "work", "sys-net").action == "deny"
    assert decide("qubes.Legacy+other", "work", "sys-net").action == "allow"


def test_model_system(basic_app) -> None:
    app = basic_app
    dvm = app.add_new_vm("AppVM", name="dvm", label="red", template_for_dispvms=True)
    app.default_dispvm = dvm
    work = app.domains["work"]
    work.tags.add("personal")
    disp = app.add_new_vm("DispVM", template=dvm, label="red")
    system = ModelSystem(app)
    assert system.domain("work").default_dispvm == "dvm"
    assert system.domain("work").tags == frozenset({"personal", "guivm-dom0", "audiovm-dom0"})
    assert system.domain(disp.name).dispvm_template == "dvm"
    assert system.domain("debian-12").klass == "TemplateVM"
    assert system.domain("nothere") is None

    policy = _inline(
        "qubes.T * @tag:personal @dispvm allow\n"
        "qubes.U * @dispvm:dvm @type:TemplateVM allow\n"
        "qubes.V * @type:AppVM @tag:personal allow\n")
    assert policy.evaluate(Request.parse("qubes.T", "work", "@dispvm"), system).target \
        == "@dispvm:dvm"
    assert policy.evaluate(Request.parse("qubes.U", disp.name, "debian-12"), system).allowed
    assert not policy.evaluate(Request.parse("qubes.U", "work", "debian-12"), system).allowed
    assert policy.evaluate(Request.parse("qubes.V", "sys-net", "work"), system).allowed
    assert not policy.evaluate(Request.parse("qubes.V", "debian-12", "work"), system).allowed
    work.tags.remove("personal")  # the live model is read on every call
    assert not policy.evaluate(Request.parse("qubes.T", "work", "@dispvm"), system).allowed
    app.domains["sys-net"].tags.add("personal")
    assert policy.evaluate(Request.parse("qubes.V", "sys-firewall", "sys-net"), system).allowed
    assert not policy.evaluate(Request.parse("qubes.V", "sys-firewall", "work"), system).allowed


def _inline(text: str) -> Policy:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "10-inline.policy").write_text(text)
        return Policy.load(Path(directory))
