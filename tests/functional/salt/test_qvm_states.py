"""The ``qvm`` states through Salt's ``state.single``, against a real qubesd.

Every state is applied for real, applied again (no change the second time),
and in test mode (``result`` None with the changes it would make, and the
model, read through a separate client, unchanged).
"""

from __future__ import annotations

import pytest

AUTO_TAGS = ["audiovm-dom0", "guivm-dom0"]  # the tags Qubes sets on every VM


@pytest.fixture
def states(loaders):
    return loaders.states.qvm


def snapshot(client, name):
    """What a state could change on a VM, read through the API."""
    vm = client.domains[name]
    with client.cache():
        props = vm.property_get_all()
        defaults = sorted(key for key in props if vm.property_is_default(key))
    return (vm.klass, vm.get_power_state(), {k: str(v) for k, v in props.items()}, defaults,
            sorted(vm.features.items()), sorted(vm.tags),
            client.call("admin.vm.firewall.Get", name))


def test_present_creates_enforces_and_converges(states, client):
    dry = states.present("s-work", template="debian-12", label="blue", mem=800, test=True)
    assert dry.result is None and dry.changes["class"] == {"old": None, "new": "AppVM"}
    assert "s-work" not in client.domains

    first = states.present("s-work", template="debian-12", label="blue", mem=800)
    assert first.result is True and first.changes["memory"] == {"old": "*default*", "new": 800}
    again = states.present("s-work", template="debian-12", label="blue", mem="800")
    assert again.result is True and again.changes == {}
    assert "[SKIP] A VM with the name 's-work' already exists." in again.comment

    # On an existing VM, present brings label and properties to what is declared.
    before = snapshot(client, "s-work")
    dry = states.present("s-work", label="red", mem=900, test=True)
    assert dry.result is None and dry.changes == {
        "label": {"old": "blue", "new": "red"}, "memory": {"old": 800, "new": 900}}
    assert snapshot(client, "s-work") == before
    enforced = states.present("s-work", label="red", mem=900)
    assert enforced.result is True and enforced.changes["label"]["new"] == "red"
    assert (str(client.domains["s-work"].label), client.domains["s-work"].memory) == ("red", 900)

    wrong = states.present("s-work", **{"class": "StandaloneVM"})
    assert wrong.result is False and "remove it first" in wrong.comment


def test_exists_missing_absent(states, client):
    states.present("s-gone", label="red")
    assert states.exists("s-gone").result is True
    assert states.missing("s-gone").result is False
    dry = states.absent("s-gone", test=True)
    assert dry.result is None and "s-gone" in client.domains
    assert states.absent("s-gone").changes == {"s-gone": {"old": "present", "new": None}}
    assert "s-gone" not in client.domains
    assert states.absent("s-gone").changes == {}
    assert states.missing("s-gone").result is True
    assert states.exists("s-gone").result is False


@pytest.mark.parametrize(("state", "kwargs", "expected"), [
    ("prefs", {"memory": 450, "include-in-backups": "False"},
     {"memory": {"old": "*default*", "new": 450},
      "include_in_backups": {"old": "*default*", "new": False}}),
    ("features", {"enable": ["gui"], "set": [{"vm-config.a": "b"}]},
     {"gui": {"old": None, "new": "1"}, "vm-config.a": {"old": None, "new": "b"}}),
    ("service", {"enable": ["cups"], "disable": ["crond"]},
     {"cups": {"old": None, "new": "1"}, "crond": {"old": None, "new": ""}}),
    ("tags", {"add": ["t1", "t2"]}, {"tags": {"old": AUTO_TAGS, "new": [
        "audiovm-dom0", "guivm-dom0", "t1", "t2"]}}),
    ("devices", {"attach": ["00:1a.0"]}, {"pci": {"old": [], "new": ["dom0+00_1a.0"]}}),
])
def test_configuration_states(states, client, state, kwargs, expected):
    name = f"s-{state}"
    states.present(name, label="green")
    before = snapshot(client, name)
    dry = getattr(states, state)(name, test=True, **kwargs)
    assert dry.result is None and dry.changes == expected
    assert snapshot(client, name) == before
    applied = getattr(states, state)(name, **kwargs)
    assert applied.result is True and applied.changes == expected
    second = getattr(states, state)(name, **kwargs)
    assert second.result is True and second.changes == {}


def test_configuration_errors_fail_with_one_line(states, client):
    states.present("s-bad", label="green")
    before = snapshot(client, "s-bad")
    for ret in (states.prefs("s-bad", memory=500, nonsense=1),
                states.prefs("s-bad", memory="a lot"),
                states.prefs("s-nope", memory=500),
                states.features("s-bad", set="not a mapping"),
                states.devices("s-bad", attach=["xyz"])):
        assert ret.result is False and ret.comment and "\n" not in ret.comment
    assert snapshot(client, "s-bad") == before


def test_firewall_state_with_expiring_rules(states, client):
    states.present("s-fw", label="green")
    rules = [{"action": "accept", "dsthost": "192.168.1.0/24", "expire": "+600"},
             {"action": "accept", "specialtarget": "dns"}, {"action": "drop"}]
    dry = states.firewall("s-fw", rules=rules, test=True)
    assert dry.result is None and client.call("admin.vm.firewall.Get", "s-fw") == \
        "action=accept\n"
    applied = states.firewall("s-fw", rules=rules)
    assert applied.result is True and len(applied.changes["rules"]["new"]) == 3
    assert states.firewall("s-fw", rules=rules).changes == {}
    # A rule without the expiry is a different rule set.
    assert states.firewall("s-fw", rules=[{"action": "drop"}]).changes["rules"]["new"] == [
        "action=drop"]


def test_power_states(states, client):
    states.present("s-power", label="green")
    for state in ("running", "start"):
        dry = getattr(states, state)("s-power", test=True)
        assert dry.result is None and client.domains["s-power"].get_power_state() == "Halted"
    assert states.running("s-power").changes["power_state"]["new"] == "running"
    assert states.start("s-power").changes == {}
    assert states.pause("s-power", test=True).result is None
    assert states.pause("s-power").changes["power_state"]["new"] == "paused"
    assert states.unpause("s-power").changes["power_state"]["new"] == "running"
    assert states.halted("s-power", test=True).result is None
    assert client.domains["s-power"].get_power_state() == "Running"
    assert states.shutdown("s-power").changes["power_state"]["new"] == "halted"
    assert states.halted("s-power").changes == {}
    states.start("s-power")
    assert states.kill("s-power").changes["power_state"]["new"] == "halted"
    assert states.pause("s-power").result is False


def test_clone_and_template_installed(states, client):
    states.present("s-orig", label="orange", mem=640)
    assert states.clone("s-copy", source="s-orig", test=True).result is None
    assert "s-copy" not in client.domains
    assert states.clone("s-copy", source="s-orig").result is True
    assert client.domains["s-copy"].memory == 640
    assert states.clone("s-copy", source="s-orig").changes == {}
    assert states.template_installed("debian-12").changes == {}
    dry = states.template_installed("s-tpl", suite="trixie", test=True)
    assert dry.result is None and dry.changes["suite"] == {"old": None, "new": "trixie"}
    assert "s-tpl" not in client.domains
    assert states.template_installed("s-tpl").result is False  # no suite in the name
    assert states.template_installed("s-orig").result is False


def test_run_state_in_test_mode_runs_nothing(states):
    ret = states.run("debian-12", cmd="touch /x", test=True)
    assert ret.result is None and ret.changes == {"cmd": {"old": None, "new": "touch /x"}}


def test_pool_states(states, client, tmp_path):
    kwargs = {"driver": "file-reflink", "dir_path": str(tmp_path / "pool"), "setup_check": "no",
              "revisions_to_keep": 1}
    assert states.pool_present("s-pool", test=True, **kwargs).result is None
    assert "s-pool" not in client.call("admin.pool.List").split()
    assert states.pool_present("s-pool", **kwargs).result is True
    assert states.pool_present("s-pool", **kwargs).changes == {}
    kwargs["revisions_to_keep"] = 3
    assert states.pool_present("s-pool", **kwargs).changes == {
        "revisions_to_keep": {"old": "1", "new": "3"}}
    assert states.pool_absent("s-pool").result is True
    assert "s-pool" not in client.call("admin.pool.List").split()
    refused = states.pool_migrated("varlibqubes")
    assert refused.result is False and "stop it first" in refused.comment


# --- qvm.vm ------------------------------------------------------------------------------


def test_vm_runs_actions_in_order_with_qubes_sections_and_changes(states, client):
    kwargs = {"present": [{"label": "blue"}, {"template": "debian-12"}],
              "prefs": [{"vcpus": 1}], "tags": [{"add": ["backup"]}],
              "features": [{"enable": ["gui"]}], "actions": ["present", "prefs", "tags",
                                                              "features"]}
    dry = states.vm("s-combo", test=True, **kwargs)
    assert dry.result is None and "s-combo" not in client.domains
    ret = states.vm("s-combo", **kwargs)
    assert ret.result is True
    assert ret.comment.startswith("====== ['present'] ======\nAppVM 's-combo' created")
    assert "\n\n====== ['prefs'] ======\n" in ret.comment
    assert ret.changes["qvm.prefs"] == {"qvm.create": {"vcpus": {"new": 1, "old": "*default*"}}}
    assert ret.changes["qvm.tags"] == {"qvm.tags": {
        "new": ["audiovm-dom0", "backup", "guivm-dom0"], "old": AUTO_TAGS}}
    assert ret.changes["qvm.features"] == {"qvm.features": {"gui": {"old": None, "new": "1"}}}
    again = states.vm("s-combo", **kwargs)
    assert again.result is True and again.changes == {}
    assert "[SKIP] A VM with the name 's-combo' already exists." in again.comment


def test_vm_skips_the_rest_after_a_failure_unless_pass(states, client):
    ret = states.vm("s-fail", present=[{"label": "blue"}], prefs=[{"netvm": "no-such-vm"}],
                    tags=[{"add": ["never"]}], actions=["present", "prefs", "tags"])
    assert ret.result is False
    assert ret.comment.endswith("====== ['tags'] ======\n[SKIP] Skipping due to previous "
                                "failure!")
    assert list(client.domains["s-fail"].tags) == AUTO_TAGS
    # Pausing a halted VM fails; listed as "pass", that does not fail the state.
    ok = states.vm("s-fail", pause=[], tags=[{"add": ["after"]}],
                   actions=[{"pause": "pass"}, "tags"])
    assert ok.result is True and sorted(client.domains["s-fail"].tags) == sorted(
        ["after", *AUTO_TAGS])
    assert "only a running VM can be paused" in ok.comment
    strict = states.vm("s-fail", pause=[], tags=[{"add": ["later"]}], actions=["pause", "tags"])
    assert strict.result is False and "later" not in client.domains["s-fail"].tags
    unknown = states.vm("s-fail", bogus=[])
    assert unknown.result is False and unknown.comment == "Unknown action keyword: bogus"


def test_global_prefs_state(states, client):
    states.present("s-gnet", label="red", flags=["proxy"])
    client.domains["s-gnet"].netvm = None  # a default_netvm may not follow default_netvm
    dry = states.global_prefs("defaults", default_netvm="s-gnet", test=True)
    assert dry.result is None and dry.changes["default_netvm"]["new"] == "s-gnet"
    assert client.default_netvm != "s-gnet"
    assert states.global_prefs("defaults", default_netvm="s-gnet").result is True
    assert client.default_netvm == "s-gnet"
    assert states.global_prefs("defaults", default_netvm="s-gnet").changes == {}
    assert states.global_prefs("defaults", nonsense=1).result is False
