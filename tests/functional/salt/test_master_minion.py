"""A salt-master and a minion on loopback: the master applies the shipped formulas
to the minion, which is a dom0 managing its installation (how a fleet of machines
is managed). The master serves the Salt tree and renders the ``qubes`` pillar; the
minion runs the ``qvm`` modules against its qubesd."""

from __future__ import annotations

import pytest

from qubes_core.mgmt import layout
from tests.functional.salt.conftest import Installation, build_base


@pytest.fixture
def dom0_installation(tmp_path):
    base = tmp_path / "base"
    build_base(base)
    inst = Installation(base)
    inst.start()
    yield inst
    inst.stop()


def test_master_applies_formulas_to_a_dom0_minion(salt_factories, dom0_installation):
    base = dom0_installation.base
    tree = layout.lay_out(base)
    from qubes_core.mgmt import tops

    tops.enable(tree, ["qvm.sys-net", "qvm.sys-firewall", "qvm.work"])
    local = layout.minion_config(base)
    master = salt_factories.salt_master_daemon("qubes-master", overrides={
        "file_roots": local["file_roots"], "pillar_roots": local["pillar_roots"],
        "top_file_merging_strategy": "merge", "nodegroups": local["nodegroups"],
        "ext_pillar": local["ext_pillar"], "pillar_dirs": local["pillar_dirs"],
        "qubes.base_dir": str(base)})
    minion = master.salt_minion_daemon("dom0", overrides={
        key: local[key] for key in ("module_dirs", "states_dirs", "grains_dirs", "nodegroups",
                                    "qubes.base_dir")})
    with master.started(), minion.started():
        cli = master.salt_cli(timeout=240)
        pillar = cli.run("pillar.get", "qubes", minion_tgt="dom0")
        # (the factories' output masks the word "admin", their test password)
        assert pillar.returncode == 0
        assert sorted(pillar.data) == ["features", "netvm", "tags", "template", "type"]
        assert pillar.data["template"] is None and pillar.data["features"] == {}
        ret = cli.run("state.highstate", minion_tgt="dom0")
        assert ret.returncode == 0, ret.stdout
        assert ret.data and all(item["result"] is True for item in ret.data.values())
        again = cli.run("state.highstate", minion_tgt="dom0")
        assert [item for item in again.data.values() if item["changes"]] == []

    client = dom0_installation.client()
    assert client.domains["work"].netvm == "sys-firewall"
    assert client.domains["sys-firewall"].netvm == "sys-net"
    assert client.default_netvm == "sys-firewall"
