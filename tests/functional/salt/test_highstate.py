"""The shipped dom0 formulas applied by ``state.highstate`` through Salt's loaders,
twice (the second run changes nothing), after a dry run that changes nothing; and a
formula written in Qubes' own style runs unchanged."""

from __future__ import annotations

import sys
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


def test_a_state_run_reads_once_until_something_writes(loaders, client, installation,
                                                       monkeypatch):
    from qubes_core.client.transport import Transport

    for name in ("rc-a", "rc-b"):
        client.add_new_vm("AppVM", name, "red")
        client.domains[name].memory = 512
    tree = layout.salt_tree(installation.base)
    (tree.salt / "runcache").mkdir(exist_ok=True)
    other_tool = f"{sys.executable} -m qubes_core.cli.qvm_prefs --base-dir " \
                 f"{installation.base} rc-a memory 700"
    (tree.salt / "runcache" / "init.sls").write_text(textwrap.dedent(f"""\
        a-memory:
          qvm.prefs: [{{name: rc-a}}, {{memory: 512}}]
        a-label:
          qvm.prefs: [{{name: rc-a}}, {{label: red}}]
        b-memory:
          qvm.prefs: [{{name: rc-b}}, {{memory: 512}}]
        other-tool:
          cmd.run: [{{name: "{other_tool}"}}]
        a-memory-again:
          qvm.prefs: [{{name: rc-a}}, {{memory: 512}}]
        """))
    calls = []
    original = Transport.call_text

    def counted(self, method, dest="dom0", *args, **kwargs):
        calls.append((method, dest))
        return original(self, method, dest, *args, **kwargs)

    monkeypatch.setattr(Transport, "call_text", counted)
    ret = loaders.modules.state.sls("runcache")
    monkeypatch.undo()

    by_id = {item["__id__"]: item for item in results(ret)}
    assert all(item["result"] is True for item in by_id.values()), by_id
    assert [by_id[i]["changes"] for i in ("a-memory", "a-label", "b-memory")] == [{}] * 3
    # What the other tool wrote is seen, not an answer kept from before it ran.
    assert by_id["a-memory-again"]["changes"] == {"memory": {"old": 700, "new": 512}}
    assert client.domains["rc-a"].memory == 512
    assert calls.count(("admin.vm.property.GetAll", "rc-a")) == 2
    assert calls.count(("admin.vm.property.GetAll", "rc-b")) == 1
