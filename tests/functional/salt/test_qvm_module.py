"""The ``qvm`` execution module, loaded by Salt's loader, against a real qubesd.

Each test works on VMs of its own name; the model is checked through a
separate Admin API client, so what is asserted is what qubesd holds.
"""

from __future__ import annotations

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError


def test_check_and_state(qvm):
    assert qvm.check("debian-12").passed()
    assert qvm.check("debian-12", "missing").failed()
    assert qvm.check("no-such-vm", "missing").passed()
    assert qvm.state("debian-12") == "halted"
    assert qvm.state("debian-12", "halted").passed()
    assert not qvm.state("debian-12", "running").passed()
    with pytest.raises(SaltInvocationError, match="No such domain: 'no-such-vm'"):
        qvm.state("no-such-vm")


def test_create_with_flags_and_options(qvm, client):
    ret = qvm.create("m-net", label="red", mem=500, vcpus=1, flags=["net"])
    assert ret["result"] is True
    assert ret["changes"]["class"] == {"old": None, "new": "AppVM"}
    vm = client.domains["m-net"]
    assert (vm.memory, vm.vcpus, vm.provides_network, vm.netvm) == (500, 1, True, None)
    assert str(vm.label) == "red" and vm.template == "debian-12"
    with pytest.raises(SaltInvocationError, match="already exists"):
        qvm.create("m-net", label="red")
    with pytest.raises(SaltInvocationError, match="no such label 'pink'"):
        qvm.create("m-pink", label="pink")
    with pytest.raises(SaltInvocationError, match="unknown option"):
        qvm.create("m-bad", label="red", colour="x")
    assert "m-pink" not in client.domains and "m-bad" not in client.domains


def test_create_with_a_bad_property_leaves_nothing(qvm, client):
    with pytest.raises(SaltInvocationError, match="expected an integer"):
        qvm.create("m-half", label="red", mem="lots")
    assert "m-half" not in client.domains


def test_create_in_test_mode_changes_nothing(qvm, client, test_mode):
    ret = qvm.create("m-dry", label="blue")
    assert ret["test"] is True and ret["changes"]["class"]["new"] == "AppVM"
    assert "m-dry" not in client.domains


def test_prefs_list_get_set_and_reset(qvm, client):
    qvm.create("m-prefs", label="green")
    listed = qvm.prefs("m-prefs")
    assert listed["label"] == "green" and listed["template"] == "debian-12"
    assert qvm.prefs("m-prefs", "memory", "provides-network") == {
        "memory": client.domains["m-prefs"].memory, "provides_network": False}
    assert qvm.prefs("m-prefs", get=["vcpus"]) == {"vcpus": client.domains["m-prefs"].vcpus}

    ret = qvm.prefs("m-prefs", memory="700", **{"provides-network": "true"})
    assert ret["changes"] == {"memory": {"old": "*default*", "new": 700},
                              "provides_network": {"old": "*default*", "new": True}}
    assert client.domains["m-prefs"].memory == 700
    # The same values in other spellings are no change.
    assert qvm.prefs("m-prefs", memory=700, provides_network=True)["changes"] == {}
    assert qvm.prefs("m-prefs", set=[{"memory": "700"}])["changes"] == {}
    # The reference's alias and dashes.
    assert qvm.prefs("m-prefs", **{"dispvm-allowed": True})["changes"] == {
        "template_for_dispvms": {"old": "*default*", "new": True}}
    ret = qvm.prefs("m-prefs", memory="*default*")
    assert ret["changes"] == {"memory": {"old": 700, "new": "*default*"}}
    assert client.domains["m-prefs"].property_is_default("memory")


def test_prefs_errors_are_one_line_and_change_nothing(qvm, client):
    qvm.create("m-err", label="green")
    with pytest.raises(SaltInvocationError, match="has no property 'colour'"):
        qvm.prefs("m-err", memory=800, colour="x")
    with pytest.raises(SaltInvocationError, match="expected true or false"):
        qvm.prefs("m-err", memory=800, autostart="maybe")
    with pytest.raises(SaltInvocationError, match=r"No such domain: 'nope'"):
        qvm.prefs("nope", memory=800)
    with pytest.raises((SaltInvocationError, CommandExecutionError)) as raised:
        qvm.prefs("m-err", netvm="no-such-netvm")
    assert "\n" not in str(raised.value)
    assert client.domains["m-err"].property_is_default("memory")


def test_prefs_in_test_mode_changes_nothing(qvm, client, test_mode):
    qvm.create("m-dryprefs", label="green", test=False)
    ret = qvm.prefs("m-dryprefs", memory=900, label="red")
    assert ret["test"] is True
    assert ret["changes"]["memory"] == {"old": "*default*", "new": 900}
    vm = client.domains["m-dryprefs"]
    assert vm.property_is_default("memory") and str(vm.label) == "green"


def test_features_and_services(qvm, client):
    qvm.create("m-feat", label="green")
    ret = qvm.features("m-feat", enable=["gui"], set={"vm-config.x": 1})
    assert ret["changes"] == {"gui": {"old": None, "new": "1"},
                              "vm-config.x": {"old": None, "new": "1"}}
    assert qvm.features("m-feat", enable=["gui"], set={"vm-config.x": "1"})["changes"] == {}
    assert qvm.features("m-feat")["vm-config.x"] == "1"
    assert qvm.features("m-feat", default=["gui"])["changes"] == {
        "gui": {"old": "1", "new": None}}
    assert "gui" not in client.domains["m-feat"].features

    assert qvm.service("m-feat", "enable", "cups")["changes"] == {
        "cups": {"old": None, "new": "1"}}
    assert qvm.service("m-feat", disable=["cups"])["changes"] == {
        "cups": {"old": "1", "new": ""}}
    assert qvm.service("m-feat") == {"cups": False}
    assert client.domains["m-feat"].features["service.cups"] == ""
    with pytest.raises(SaltInvocationError, match="unknown action 'toggle'"):
        qvm.service("m-feat", "toggle", "cups")


def test_tags(qvm, client):
    qvm.create("m-tags", label="green")
    auto = ["audiovm-dom0", "guivm-dom0"]  # the tags Qubes sets on every VM
    assert qvm.tags("m-tags", "add", "a", "b")["changes"] == {
        "tags": {"old": auto, "new": sorted(["a", "b", *auto])}}
    assert qvm.tags("m-tags", add=["a"])["changes"] == {}
    assert qvm.tags("m-tags", **{"del": ["a"]})["changes"] == {
        "tags": {"old": sorted(["a", "b", *auto]), "new": sorted(["b", *auto])}}
    assert qvm.tags("m-tags") == sorted(["b", *auto])
    assert sorted(client.domains["m-tags"].tags) == sorted(["b", *auto])


def test_devices_and_pcidevs(qvm, client):
    # Assignments are kept in qubes.xml (no real PCI passthrough here: Xen is absent).
    qvm.create("m-pci", label="red", flags=["net"])
    ret = qvm.devices("m-pci", "attach", "00:19.0")
    assert ret["changes"] == {"pci": {"old": [], "new": ["dom0+00_19.0"]}}
    assert qvm.devices("m-pci") == {"00:19.0": {}}
    assert qvm.prefs("m-pci", pcidevs=["00:19.0"])["changes"] == {}
    ret = qvm.prefs("m-pci", pcidevs=["00:19.0"], pci_strictreset=False)
    assert ret["changes"]["pcidevs"]["new"] == ["00:19.0"]
    assert qvm.devices("m-pci") == {"00:19.0": {"no-strict-reset": "True"}}
    assert qvm.devices("m-pci", detach=["dom0:00_19.0"])["changes"]["pci"]["new"] == []
    with pytest.raises(SaltInvocationError, match="not a PCI device"):
        qvm.devices("m-pci", attach=["nonsense"])


def test_firewall_with_expiring_rules_converges(qvm, client):
    qvm.create("m-fw", label="red")
    rules = [{"action": "accept", "dsthost": "10.0.0.1", "proto": "tcp", "dstports": 443,
              "expire": "+3600"}, {"action": "drop"}]
    first = qvm.firewall("m-fw", rules=rules)
    assert first["changes"]["rules"]["old"] == ["action=accept"]
    new = first["changes"]["rules"]["new"]
    assert new[0].startswith("action=accept proto=tcp dsthost=10.0.0.1/32 dstports=443-443 "
                             "expire=") and new[1] == "action=drop"
    assert qvm.firewall("m-fw", rules=rules)["changes"] == {}
    assert qvm.firewall("m-fw") == new
    with pytest.raises(SaltInvocationError, match="firewall rule 1"):
        qvm.firewall("m-fw", rules=[{"action": "maybe"}])
    assert qvm.firewall("m-fw") == new


def test_power_actions(qvm, client):
    qvm.create("m-power", label="red")
    assert qvm.start("m-power")["changes"] == {
        "power_state": {"old": "halted", "new": "running"}}
    assert qvm.start("m-power")["changes"] == {}
    assert qvm.pause("m-power")["changes"]["power_state"]["new"] == "paused"
    assert client.domains["m-power"].get_power_state() == "Paused"
    assert qvm.unpause("m-power")["changes"]["power_state"]["new"] == "running"
    assert qvm.shutdown("m-power")["changes"]["power_state"]["new"] == "halted"
    assert qvm.shutdown("m-power")["changes"] == {}
    qvm.start("m-power")
    assert qvm.kill("m-power")["changes"]["power_state"]["new"] == "halted"
    assert client.domains["m-power"].get_power_state() == "Halted"
    with pytest.raises(CommandExecutionError, match="only a running VM can be paused"):
        qvm.pause("m-power")


def test_power_in_test_mode_changes_nothing(qvm, client, test_mode):
    qvm.create("m-drypower", label="red", test=False)
    assert qvm.start("m-drypower")["test"] is True
    assert client.domains["m-drypower"].get_power_state() == "Halted"


def test_remove_and_clone(qvm, client):
    qvm.create("m-src", label="purple", mem=555)
    qvm.features("m-src", set={"vm-config.k": "v"})
    qvm.tags("m-src", add=["t1"])
    ret = qvm.clone("m-src", "m-copy")
    assert ret["result"] is True
    copy = client.domains["m-copy"]
    assert (copy.memory, str(copy.label), copy.features["vm-config.k"],
            sorted(copy.tags)) == (555, "purple", "v", ["audiovm-dom0", "guivm-dom0", "t1"])
    assert qvm.clone("m-src", "m-copy")["changes"] == {}
    assert qvm.remove("m-copy")["changes"] == {"m-copy": {"old": "present", "new": None}}
    assert "m-copy" not in client.domains
    assert qvm.remove("m-copy")["changes"] == {}


def test_template_install_and_info(qvm, client):
    # The build itself runs in tests/integration/test_salt_sandbox.py (it needs root
    # and debootstrap's cache); here what is decided before building.
    assert qvm.template_install("debian-12")["changes"] == {}
    dry = qvm.template_install("debian-13", test=True)
    assert dry["test"] is True and dry["changes"]["suite"] == {"old": None, "new": "trixie"}
    assert "debian-13" not in client.domains
    with pytest.raises(SaltInvocationError, match="no Debian suite for template 'fedora-41'"):
        qvm.template_install("fedora-41")
    with pytest.raises(SaltInvocationError, match="unknown option.*: colour"):
        qvm.template_install("m-tpl", suite="bookworm", colour="red")
    with pytest.raises(SaltInvocationError, match="no such label 'mauve'"):
        qvm.template_install("m-tpl", suite="bookworm", label="mauve")
    qvm.create("m-app", label="red")
    with pytest.raises(SaltInvocationError, match="exists as AppVM, not as a TemplateVM"):
        qvm.template_install("m-app")
    assert "m-tpl" not in client.domains
    info = qvm.template_info("debian-12")
    assert info["class"] == "TemplateVM" and info["prefs"]["label"] == "black"


def test_create_disposable(qvm, client):
    qvm.create("m-dvm", label="red", prefs={"template_for_dispvms": True})
    ret = qvm.create_disposable("m-dvm")
    name = ret["changes"]["dispvm"]["new"]
    assert client.domains[name].klass == "DispVM"
    assert client.domains[name].template == "m-dvm"


def test_pools_and_volumes(qvm, client, tmp_path):
    assert qvm.pools()["varlibqubes"]["driver"] == "file-reflink"
    ret = qvm.pool_add("m-pool", "file-reflink", dir_path=str(tmp_path / "p"),
                       setup_check="no", revisions_to_keep=2)
    assert ret["changes"]["m-pool"]["new"]["driver"] == "file-reflink"
    assert qvm.pool_add("m-pool", "file-reflink", revisions_to_keep=2)["changes"] == {}
    assert qvm.pool_add("m-pool", "file-reflink", revisions_to_keep=3)["changes"] == {
        "revisions_to_keep": {"old": "2", "new": "3"}}
    with pytest.raises(SaltInvocationError, match="only revisions_to_keep can change"):
        qvm.pool_add("m-pool", "file-reflink", dir_path="/elsewhere")
    assert qvm.pool_remove("m-pool")["changes"] == {"m-pool": {"old": "present", "new": None}}

    qvm.create("m-vol", label="red")
    volumes = qvm.volumes("m-vol")
    assert volumes["private"]["save_on_stop"] == "True"
    size = int(volumes["private"]["size"])
    assert qvm.volume_resize("m-vol", "private", size + (1 << 20))["changes"] == {
        "size": {"old": size, "new": size + (1 << 20)}}
    with pytest.raises(SaltInvocationError, match="volumes only grow"):
        qvm.volume_resize("m-vol", "private", "1M")
    assert qvm.volume_revisions("m-vol", "private") == []
    with pytest.raises(SaltInvocationError, match="keeps no revision"):
        qvm.volume_revert("m-vol", "private")


def test_pool_migrate_refuses_while_qubesd_serves(qvm):
    with pytest.raises(CommandExecutionError, match="stop it first"):
        qvm.pool_migrate()


def test_policy_explain(qvm):
    ret = qvm.policy_explain("m-any", "dom0", "qubes.NoSuchService")
    assert ret["action"] == "deny" and ret["allowed"] is False
    assert ret["explanation"][0] == "call: qubes.NoSuchService+ from m-any to dom0"


def test_run_checks_its_arguments_before_running(qvm):
    # Commands really run in tests/integration/test_salt_sandbox.py (sandbox runtime).
    with pytest.raises(SaltInvocationError, match="No such domain: 'no-such-vm'"):
        qvm.run("no-such-vm", "true")
    with pytest.raises(SaltInvocationError, match="unknown option.*: colour"):
        qvm.run("debian-12", "true", colour="red")
    dry = qvm.run("debian-12", "touch /x", user="root", test=True)
    assert dry["test"] is True and dry["changes"] == {}
    assert dry["comment"] == "would run: qvm-run --pass-io --user root --no-autostart " \
                             "debian-12 'touch /x'"


def test_every_function_documents_a_cli_example(loaders):
    docs = loaders.modules.sys.doc("qvm")
    public = [name for name in docs if name.startswith("qvm.")]
    assert len(public) >= 30
    assert [name for name in public if "CLI Example:" not in (docs[name] or "")] == []


def test_global_prefs(qvm, client):
    assert qvm.global_prefs()["default_template"] == "debian-12"
    assert qvm.global_prefs("default_template") == {"default_template": "debian-12"}
    # its own netvm set (to none), as sys-net's: following default_netvm would be a loop
    qvm.create("g-net", label="red", flags=["proxy"], prefs={"netvm": ""})
    dry = qvm.global_prefs(default_netvm="g-net", test=True)
    assert dry["test"] is True and client.default_netvm is None
    ret = qvm.global_prefs(default_netvm="g-net")
    assert ret["changes"] == {"default_netvm": {"old": "*default*", "new": "g-net"}}
    assert client.default_netvm == "g-net"
    assert qvm.global_prefs(default_netvm="g-net")["changes"] == {}
    assert qvm.global_prefs(default_netvm="*default*")["changes"]["default_netvm"]["new"] == \
        "*default*"
    with pytest.raises(SaltInvocationError, match="the system has no property 'nonsense'"):
        qvm.global_prefs(nonsense=1)


def test_volume_revert_to_a_kept_revision(qvm, client):
    qvm.create("m-rev", label="red")
    qvm.start("m-rev")
    qvm.shutdown("m-rev")
    kept = qvm.volume_revisions("m-rev", "private")
    assert len(kept) == 1
    dry = qvm.volume_revert("m-rev", "private", test=True)
    assert dry["test"] is True and qvm.volume_revisions("m-rev", "private") == kept
    ret = qvm.volume_revert("m-rev", "private", kept[0])
    assert ret["changes"] == {"private": {"old": "current", "new": kept[0]}}
    with pytest.raises(SaltInvocationError, match="has no revision 'nope'"):
        qvm.volume_revert("m-rev", "private", "nope")
