"""qvm-sync-clock: the clockvm's answer is checked before dom0's clock is set.

The clockvm's side (qubes.GetDate run in a VM through qvm-run) needs the sandbox
runtime; here a stand-in ``qvm-run`` on PATH prints the answer, so what is tested
is this tool's handling of it against a real qubesd.
"""

from __future__ import annotations

import datetime
import os
import stat

import pytest

from qubes_core.cli.common import ToolError
from qubes_core.cli.qvm_sync_clock import parse_date
from tests.functional.cli.conftest import Installation

NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize("answer", [b"2026-11-30T12:30:00+00:00\n", b"2026-11-30T12:30:00Z"])
def test_answer_accepted(answer):
    assert parse_date(answer, NOW) == datetime.datetime(2026, 11, 30, 12, 30,
                                                        tzinfo=datetime.UTC)


@pytest.mark.parametrize("answer", [b"", b"yesterday", b"2026-11-30T12:30:00+02:00",
                                    b"2026-13-30T12:30:00+00:00", b"2020-01-01T00:00:00Z",
                                    b"2031-01-01T00:00:00Z", b"2026-11-30T12:30:00Z; rm -rf /",
                                    b"2026-11-30T12:30:00Z\n" + b"x" * 100])
def test_answer_refused(answer):
    with pytest.raises(ToolError):
        parse_date(answer, NOW)


def fake_qvm_run(directory, answer: str) -> dict[str, str]:
    script = directory / "qvm-run"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {directory}/args\nprintf '%s' '{answer}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}


def test_dry_run_asks_the_clockvm(inst: Installation, tmp_path):
    result = inst.run("qvm-sync-clock")
    assert (result.code, result.out) == (0, "no clockvm is set: nothing to do\n")
    inst.run("qubes-prefs", "clockvm", "sys-net")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    inst.env.update(fake_qvm_run(tmp_path, now.isoformat()))
    result = inst.run("qvm-sync-clock", "--dry-run")
    assert (result.code, result.out) == (0, now.isoformat() + "\n"), result
    assert (tmp_path / "args").read_text() == "--pass-io --service sys-net qubes.GetDate\n"
    inst.env.update(fake_qvm_run(tmp_path, "2000-01-01T00:00:00+00:00"))
    result = inst.run("qvm-sync-clock", "--dry-run")
    assert result.code == 1 and "too far" in result.err
