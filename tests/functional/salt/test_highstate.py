"""The shipped dom0 formulas applied by ``state.highstate`` through Salt's loaders,
twice (the second run changes nothing), after a dry run that changes nothing; and a
formula written in Qubes' own style runs unchanged."""

from __future__ import annotations

import textwrap

import pytest

from qubes_core.mgmt import layout

DOM0_TOPS = ["qvm.sys-net", "qvm.sys-firewall", "qvm.default-dispvm", "qvm.default-mgmt-dvm",
             "qvm.personal", "qvm.work", "qvm.untrusted", "qvm.vault"]


def model(client):
    """Every VM with the settings the formulas manage, and the global properties."""
    vms = {}
    with client.cache():
        for vm in client.domains:
            props = vm.property_get_all()
            vms[vm.name] = {key: str(props.get(key)) for key in (
                "label", "template", "netvm", "provides_network", "memory", "virt_mode",
                "template_for_dispvms")}
        prefs = client.property_get_all()
    return vms, {key: str(prefs[key]) for key in (
        "default_netvm", "default_dispvm", "management_dispvm", "clockvm")}


def results(ret):
    return list(ret.raw.values())


@pytest.fixture(scope="module")
def pillar_overrides(installation):
    tree = layout.salt_tree(installation.base)
    (tree.pillar / "base").mkdir(parents=True, exist_ok=True)
    (tree.pillar / "base" / "overrides.sls").write_text(
        "qvm:\n  work:\n    label: purple\n  vault:\n    name: secrets\n")
    (tree.pillar / "base" / "overrides.top").write_text("base:\n  dom0:\n    - overrides\n")


def test_dom0_highstate_dry_run_then_twice(loaders, client, pillar_overrides):
    top = loaders.modules.top
    top.enable(*DOM0_TOPS)
    top.enable("overrides", pillar=True)
    loaders.refresh_pillar()
    before = model(client)

    dry = loaders.modules.state.highstate(test=True)
    assert dry.raw and all(item["result"] in (None, True) for item in results(dry))
    assert any(item["result"] is None for item in results(dry))
    assert model(client) == before

    first = loaders.modules.state.highstate()
    failed = [item["comment"] for item in results(first) if item["result"] is not True]
    assert failed == []
    vms, prefs = model(client)
    assert vms["sys-net"]["provides_network"] == "True" and vms["sys-net"]["netvm"] == "None"
    assert vms["sys-net"]["virt_mode"] == "hvm"
    assert vms["sys-firewall"]["netvm"] == "sys-net"
    assert vms["default-mgmt-dvm"]["netvm"] == "None"
    assert vms["default-mgmt-dvm"]["template_for_dispvms"] == "True"
    assert (vms["work"]["label"], vms["work"]["netvm"]) == ("purple", "sys-firewall")
    assert vms["secrets"]["netvm"] == "None" and "vault" not in vms
    assert prefs == {"default_netvm": "sys-firewall", "default_dispvm": "default-dvm",
                     "management_dispvm": "default-mgmt-dvm", "clockvm": "sys-net"}
    assert sorted(vms) == sorted(["dom0", "debian-12", "sys-net", "sys-firewall",
                                  "default-dvm", "default-mgmt-dvm", "personal", "work",
                                  "untrusted", "secrets"])
    pcidevs = loaders.modules.qvm.prefs("sys-net", "pcidevs")["pcidevs"]
    assert pcidevs == sorted(loaders.grains["pci_net_devs"])
    applied = model(client)

    second = loaders.modules.state.highstate()
    assert [item["changes"] for item in results(second) if item["changes"]] == []
    assert all(item["result"] is True for item in results(second))
    assert model(client) == applied


REFERENCE_MACRO = textwrap.dedent("""\
    {%- macro load(defaults) -%}
    {%- set vm = salt['slsutil.merge'](defaults, {}) %}
    {{ vm.name }}:
      qvm.vm:
        - name: {{ vm.name }}
    {%- for action in vm.actions %}
        - {{ action }}: {{ vm.get(action, []) | json }}
    {%- endfor %}
        - actions: {{ vm.actions | json }}
    {%- endmacro %}
    """)

REFERENCE_SLS = textwrap.dedent("""\
    {%- from "refstyle/template.jinja" import load -%}
    {%- if salt['qvm.check']('ref-usb', 'missing').passed() %}
    {%- load_yaml as defaults %}
    name: ref-usb
    present:
      - template: debian-12
      - label: red
      - mem: 300
      - flags:
        - net
    prefs:
      - autostart: true
      - virt_mode: hvm
    service:
      - disable:
        - meminfo-writer
    tags:
      - add:
        - usbvm
    actions:
      - present
      - prefs
      - service
      - tags
    {%- endload %}
    {{ load(defaults) }}
    {%- endif %}
    """)


def test_formula_in_the_reference_style_runs_unchanged(loaders, client, installation):
    tree = layout.salt_tree(installation.base)
    (tree.salt / "refstyle").mkdir(exist_ok=True)
    (tree.salt / "refstyle" / "template.jinja").write_text(REFERENCE_MACRO)
    (tree.salt / "refstyle" / "usb.sls").write_text(REFERENCE_SLS)

    ret = loaders.modules.state.sls("refstyle.usb")
    (item,) = results(ret)
    assert item["result"] is True, item["comment"]
    assert item["comment"].startswith("====== ['present'] ======\n")
    assert "====== ['tags'] ======" in item["comment"]
    assert item["changes"]["qvm.tags"] == {"qvm.tags": {  # with Qubes' automatic tags
        "old": ["audiovm-dom0", "guivm-dom0"], "new": ["audiovm-dom0", "guivm-dom0", "usbvm"]}}
    assert item["changes"]["qvm.prefs"]["qvm.create"]["virt_mode"]["new"] == "hvm"
    vm = client.domains["ref-usb"]
    assert (vm.memory, vm.provides_network, vm.netvm, vm.autostart) == (300, True, None, True)
    assert vm.features["service.meminfo-writer"] == ""
    # The guard: once the VM exists the formula renders to nothing.
    assert loaders.modules.state.sls("refstyle.usb").raw == {}
