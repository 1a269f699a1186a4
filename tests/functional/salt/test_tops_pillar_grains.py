"""Tops switch, the ``qubes`` ext_pillar, the PCI grains and the user area, through
Salt's loaders on a real installation."""

from __future__ import annotations

from pathlib import Path

import pytest
from salt.exceptions import SaltInvocationError

from qubes_core.mgmt import grains as pci_grains
from qubes_core.mgmt import layout


def test_enable_disable_and_merged_top(loaders, installation):
    top = loaders.modules.top
    tree = layout.salt_tree(installation.base)
    assert top.enable("qvm.sys-net", "qvm.vault") == {
        "qvm.sys-net.top": {"status": "enabled"}, "qvm.vault.top": {"status": "enabled"}}
    link = tree.tops() / "qvm.sys-net.top"
    assert link.is_symlink()
    assert link.resolve() == (layout.code_dir() / "formulas/qvm/sys-net.top").resolve()
    assert top.enabled() == {"qvm.sys-net.top": {"status": "enabled"},
                             "qvm.vault.top": {"status": "enabled"}}
    assert top.disabled()["qvm.work.top"] == {"status": "disabled"}
    assert "qvm.sys-net.top" not in top.disabled()
    assert top.status()["qvm.sys-net.top"] == {"status": "enabled"}
    shown = loaders.modules.state.show_top()
    assert shown["base"] == ["qvm.sys-net", "qvm.vault"]

    assert top.disable("qvm.vault") == {"qvm.vault.top": {"status": "disabled"}}
    assert not (tree.tops() / "qvm.vault.top").exists()
    assert loaders.modules.state.show_top()["base"] == ["qvm.sys-net"]
    with pytest.raises(SaltInvocationError, match="no top file 'qvm.nonexistent'"):
        top.enable("qvm.sys-net", "qvm.nonexistent")
    with pytest.raises(SaltInvocationError, match="invalid top name"):
        top.enable("../../etc/passwd")
    top.disable("qvm.sys-net")
    assert top.enabled() == {}


def test_pillar_tops_are_switched_separately(loaders, installation):
    tree = layout.salt_tree(installation.base)
    (tree.pillar / "base" / "extra.sls").write_text("extra: {answer: 42}\n")
    (tree.pillar / "base" / "extra.top").write_text("base:\n  dom0:\n    - extra\n")
    top = loaders.modules.top
    assert top.enable("extra", pillar=True) == {"extra.top": {"status": "enabled"}}
    assert top.enabled() == {}
    assert top.enabled(pillar=True) == {"extra.top": {"status": "enabled"}}
    assert fresh_pillar(loaders, "dom0")["extra"] == {"answer": 42}
    top.disable("extra", pillar=True)
    assert "extra" not in fresh_pillar(loaders, "dom0")


def fresh_pillar(loaders, minion_id):
    """The pillar as a new ``salt-call pillar.items`` compiles it for ``minion_id``."""
    import salt.pillar

    opts = {**loaders.opts, "pillar": {}}
    return salt.pillar.get_pillar(opts, loaders.grains, minion_id,
                                  saltenv="base").compile_pillar()


def test_qubes_ext_pillar_of_each_vm(loaders, installation, client):
    qvm = loaders.modules.qvm
    qvm.create("p-work", label="blue", prefs={"netvm": ""})
    qvm.features("p-work", set={"vm-config.test": "value", "service.cups": "1",
                                "internal": "1", "gui": "1"})
    qvm.tags("p-work", add=["guivm-dom0", "audiovm-dom0"])

    def pillar_of(minion_id):
        return fresh_pillar(loaders, minion_id)

    assert pillar_of("p-work")["qubes"] == {
        "type": "app", "template": "debian-12", "netvm": None,
        "features": {"vm-config.test": "value", "service.cups": "1"},
        "tags": ["audiovm-dom0", "guivm-dom0"]}
    assert pillar_of("debian-12")["qubes"]["type"] == "template"
    assert pillar_of("debian-12")["qubes"]["template"] is None
    assert pillar_of("dom0")["qubes"]["type"] == "admin"
    assert "qubes" not in pillar_of("no-such-vm")


def test_pci_grains_from_sysfs(loaders):
    # The machine's own PCI devices (real sysfs; Xen passthrough itself is not used).
    expected = pci_grains.pci_grains()
    assert loaders.grains["pci_net_devs"] == expected["pci_net_devs"]
    assert loaders.grains["pci_usb_devs"] == expected["pci_usb_devs"]
    classes = {}
    for device in Path("/sys/bus/pci/devices").glob("0000:*"):
        ident = device.name[5:]
        classes[ident] = (device / "class").read_text().strip()
    assert sorted(expected["pci_net_devs"]) == sorted(
        ident for ident, klass in classes.items() if klass.startswith("0x02"))


def test_pci_grains_pick_network_and_usb_controllers(tmp_path):
    for name, klass in (("0000:00:19.0", "0x020000"), ("0000:00:14.0", "0x0c0330"),
                        ("0000:00:02.0", "0x030000"), ("0000:03:00.0", "0x028000")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "class").write_text(klass + "\n")
        (tmp_path / name / "vendor").write_text("0x8086\n")
        (tmp_path / name / "device").write_text("0x1234\n")
    assert pci_grains.pci_grains(tmp_path) == {"pci_net_devs": ["00:19.0", "03:00.0"],
                                               "pci_usb_devs": ["00:14.0"]}
    assert pci_grains.pci_grains(tmp_path / "absent") == {"pci_net_devs": [],
                                                          "pci_usb_devs": []}


def test_user_dirs_state(loaders, installation):
    tree = layout.salt_tree(installation.base)
    dry = loaders.modules.state.sls("qubes.user-dirs", test=True)
    assert all(ret["result"] is None for ret in dry.raw.values())
    assert not tree.user_salt.exists()
    ret = loaders.modules.state.sls("qubes.user-dirs")
    assert all(item["result"] is True for item in ret.raw.values())
    assert (tree.user_salt / "top.sls").read_text() == "user:\n  dom0: []\n"
    assert tree.user_pillar.is_dir() and tree.user_formulas.is_dir()
    again = loaders.modules.state.sls("qubes.user-dirs")
    assert all(not item["changes"] for item in again.raw.values())


def test_template_configuration_formula_renders(loaders):
    # Applied inside TemplateVMs later (by qubesctl); here it is rendered, not applied.
    shown = loaders.modules.state.show_sls("qvm.template-config")
    assert sorted(shown) == ["template-config-packages", "template-config-rw-config",
                             "template-config-user"]
    assert "installed" in shown["template-config-packages"]["pkg"]
    assert {"pkgs": ["vim-tiny"]} in shown["template-config-packages"]["pkg"]
    assert {"name": "user"} in shown["template-config-user"]["user"]
    rw_file = shown["template-config-rw-config"]["file"]
    assert {"name": "/rw/config/rc.local.d/50-qubes-core.rc"} in rw_file
    top = (layout.code_dir() / "formulas/qvm/template-config.top").read_text()
    assert "qubes:type:template" in top and "match: pillar" in top
