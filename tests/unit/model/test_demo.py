"""The demo builds its installation, is idempotent, and shows what it loaded."""

from qubes_core import demo
from qubes_core.app import Qubes


def test_demo_builds_and_reloads(tmp_path, capsys):
    assert demo.main(["--base-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert "created: debian-12, sys-net, sys-firewall, work, personal" in first
    assert demo.main(["--base-dir", str(tmp_path)]) == 0
    second = capsys.readouterr().out
    assert "created: nothing" in second
    table = second.split("\n\n", 1)[1]
    assert table.splitlines()[0].split() == [c.upper() for c in demo.COLUMNS]
    with Qubes(tmp_path / "qubes.xml") as app:
        assert app.domains["work"].netvm.name == "sys-firewall"
        assert app.domains["debian-12"].netvm is None
        assert app.clockvm.name == "sys-net"
        for vm in app.domains:
            assert vm.name in table
