"""``make demo``: a real qubesd is started, the VMs are built through the Admin API,
``work`` runs on libvirt's test driver, and a second run finds everything in place."""

from qubes_core import demo, paths
from qubes_core.app import Qubes
from qubes_core.client.embedded import listening


def _table_rows(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME"))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_demo_runs_the_main_job_and_is_idempotent(tmp_path, capsys):
    assert demo.main(["--base-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert "created through the Admin API: debian-12, sys-net, sys-firewall, work, " \
           "personal" in first
    rows = _table_rows(first)
    assert rows["work"][2] == "Running" and rows["sys-firewall"][2] == "Running"
    assert rows["sys-net"][2] == "Running" and rows["personal"][2] == "Halted"
    assert rows["work"][5] == "sys-firewall"
    assert "dstports=443-443" in first

    assert demo.main(["--base-dir", str(tmp_path)]) == 0
    second = capsys.readouterr().out
    assert "created through the Admin API: nothing (all there)" in second

    assert not listening(paths.resolve(tmp_path).admin_socket)  # qubesd stopped
    with Qubes(tmp_path / "qubes.xml") as app:  # and the lock is free
        assert app.domains["work"].netvm.name == "sys-firewall"
        assert app.domains["debian-12"].netvm is None
        assert app.clockvm.name == "sys-net"
        assert app.domains["work"].features["service.cups"] == "1"
        assert "personal" in app.domains["personal"].tags
        assert (app.domains["work"].dir_path / "firewall.xml").exists()
        assert (tmp_path / "appvms" / "work" / "private.img").exists()
