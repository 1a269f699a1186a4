"""The systemd files of a dom0 install: they run installed programs, the timer is
hourly, and qubesd's stderr (the journal under the unit) shows storage operations."""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import signal
import subprocess
import sys
from pathlib import Path

CONTRIB = Path(__file__).resolve().parents[3] / "contrib"
BIN = Path(sys.executable).parent


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string((CONTRIB / name).read_text())
    return parser


def console_scripts() -> set[str]:
    dist = importlib.metadata.distribution("qubes_core")
    return {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}


def test_units_run_installed_programs_and_the_timer_is_hourly():
    qubesd = unit("qubesd.service")
    assert qubesd["Service"]["ExecStart"] == "/usr/bin/qubesd"
    assert qubesd["Service"]["StandardError"] == "journal"
    clock = unit("qubes-sync-clock.service")
    assert clock["Service"]["ExecStart"] == "/usr/bin/qvm-sync-clock"
    assert clock["Unit"]["Requires"] == "qubesd.service"
    assert {"qubesd", "qvm-sync-clock"} <= console_scripts()
    timer = unit("qubes-sync-clock.timer")
    assert timer["Timer"]["OnUnitActiveSec"] == "1h"
    assert timer["Install"]["WantedBy"] == "timers.target"
    # The timer starts the service of its own name (no Unit= given).
    assert "Unit" not in timer["Timer"] and (CONTRIB / "qubes-sync-clock.service").is_file()


def test_qubesd_logs_storage_operations_to_stderr(tmp_path):
    from qubes_core.client.app import Qubes

    base = tmp_path / "base"
    read_end, write_end = os.pipe()
    daemon = subprocess.Popen(
        [str(BIN / "qubesd"), "--base-dir", str(base), "--runtime", "test", "--create",
         "--ready-fd", str(write_end)],
        pass_fds=[write_end], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as ready:
            assert ready.read() == b"ready\n"
        app = Qubes(base)
        app.add_new_vm("TemplateVM", "logged-tpl", "black")
        app.remove_vm("logged-tpl")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    log = err.decode()
    assert daemon.returncode == 0, log
    private = base / "vm-templates" / "logged-tpl" / "private.img"
    assert f"Renamed file: {private}~" in log and f" -> {private}\n" in log
    assert f"Removed file: {private}\n" in log
