"""``make demo`` on libvirt's test driver: ``qubesctl state.highstate`` of the shipped
formulas builds the system through a real qubesd, says what it skipped (the template
configuration needs the sandbox runtime: tests/integration), and a second run finds
everything in place and changes nothing."""

from qubes_core import demo, paths
from qubes_core.app import Qubes
from qubes_core.client.embedded import listening


def _table_rows(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME "))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_demo_runs_the_highstate_of_the_shipped_formulas_and_is_idempotent(tmp_path, capfd):
    assert demo.main(["--base-dir", str(tmp_path), "--runtime", "test"]) == 0
    first = capfd.readouterr()
    assert "\ndom0: OK\n" in first.out
    rows = _table_rows(first.out)
    for name in ("sys-net", "sys-firewall", "default-dvm", "default-mgmt-dvm", "personal",
                 "work", "vault"):
        assert rows[name][1] == "AppVM" and rows[name][4] == "debian-12"
    assert rows["work"][5] == "sys-firewall" and rows["sys-firewall"][5] == "sys-net"
    assert rows["vault"][5] == "-"
    assert "created an empty debian-12 through the Admin API" in first.out
    assert "skipped:\n  - configuring debian-12 through a management DispVM: --runtime " \
           "test was given" in first.out
    assert first.out.rstrip().endswith("result: OK")
    dom0_row = next(line for line in first.err.splitlines() if line.startswith("dom0 "))
    assert int(dom0_row.split()[2]) >= 7  # each formula changed something

    assert demo.main(["--base-dir", str(tmp_path), "--runtime", "test"]) == 0
    second = capfd.readouterr()
    assert "debian-12 was there already" in second.out
    dom0_row = next(line for line in second.err.splitlines() if line.startswith("dom0 "))
    assert dom0_row.split()[1:3] == ["OK", "0"]  # nothing changed the second time

    assert not listening(paths.resolve(tmp_path).admin_socket)  # qubesd stopped
    with Qubes(tmp_path / "qubes.xml") as app:  # and the lock is free
        assert app.management_dispvm.name == "default-mgmt-dvm"
        assert app.domains["default-mgmt-dvm"].template_for_dispvms
        assert app.domains["default-mgmt-dvm"].netvm is None
        assert app.domains["work"].netvm.name == "sys-firewall"
