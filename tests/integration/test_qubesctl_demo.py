"""``make demo`` where the sandbox runtime runs: the shipped formulas' highstate in dom0,
then ``debian-12`` configured through ``disp-mgmt-debian-12``, which an AppVM of it sees;
a second run changes nothing."""

from __future__ import annotations

from pathlib import Path

from qubes_core import demo
from tests.integration.support import leaks_under, require_sandbox


def summary_row(err: str, name: str) -> list[str]:
    return next(line.split() for line in err.splitlines() if line.startswith(name + " "))


def test_the_demo_configures_a_template_through_a_management_dispvm(tmp_path: Path, capfd
                                                                    ) -> None:
    require_sandbox()
    base = tmp_path / "demo"
    assert demo.main(["--base-dir", str(base)]) == 0
    first = capfd.readouterr()
    assert "(runtime: sandbox)" in first.out
    assert "\ndebian-12: OK\n" in first.out
    assert f"sees:\n  {demo.DEMO_USER}\n  configured by qubesctl through a management " \
           "DispVM" in first.out
    assert "skipped:" not in first.out and first.out.rstrip().endswith("result: OK")
    assert int(summary_row(first.err, "debian-12")[2]) >= 2

    assert demo.main(["--base-dir", str(base)]) == 0
    second = capfd.readouterr()
    assert summary_row(second.err, "dom0")[1:3] == ["OK", "0"]
    assert summary_row(second.err, "debian-12")[1:3] == ["OK", "0"]
    assert not [row for row in second.out.splitlines() if row.startswith("disp-mgmt-")]
    assert not (base / "etc/qubes/policy.d/30-qubesctl-salt.policy").exists()
    assert leaks_under(base) == []
