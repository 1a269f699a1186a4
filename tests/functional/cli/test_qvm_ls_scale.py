"""qvm-ls on 1000 qubes: one admin.vm.List and one GetAll per qube, counted (not timed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qubes_core.cli import common, qvm_ls
from tests.functional.api.conftest import RunningQubesd, build_installation


@pytest.fixture(scope="module")
def thousand(tmp_path_factory) -> RunningQubesd:
    base: Path = tmp_path_factory.mktemp("thousand")
    build_installation(base, appvms=1000)
    daemon = RunningQubesd(base)
    daemon.start()
    yield daemon
    daemon.stop()


def run_counted(monkeypatch, capsys, base: Path, *argv: str) -> tuple[int, list[str], list[str]]:
    """Run qvm-ls in this process; (exit code, output lines, methods called)."""
    clients = []
    real_connect = common.connect

    def counting_connect(args):
        app = real_connect(args)
        methods: list[str] = []
        real_call = app.transport.call

        def call(method, *rest, **kwargs):
            methods.append(method)
            return real_call(method, *rest, **kwargs)

        app.transport.call = call
        clients.append(methods)
        return app

    monkeypatch.setattr(common, "connect", counting_connect)
    code = qvm_ls.main(["--base-dir", str(base), *argv])
    return code, capsys.readouterr().out.splitlines(), clients[0]


def test_round_trips_for_1000_qubes(thousand, monkeypatch, capsys):
    code, lines, methods = run_counted(monkeypatch, capsys, thousand.base_dir)
    assert code == 0
    assert len(lines) == 1 + 1004  # header, dom0, the template, sys-net, sys-firewall, vm1..1000
    assert methods.count("admin.vm.List") == 1
    assert methods.count("admin.vm.property.GetAll") == 1004
    assert len(methods) == 1 + 1004, set(methods)
    assert lines[-1].split() == ["vm999", "HALTED", "AppVM", "blue", "debian-12", "sys-firewall"]


def test_listing_without_properties_is_one_call(thousand, monkeypatch, capsys):
    code, lines, methods = run_counted(monkeypatch, capsys, thousand.base_dir, "--raw-list",
                                       "--halted")
    assert code == 0 and len(lines) == 1003
    assert methods == ["admin.vm.List"]
    code, lines, methods = run_counted(monkeypatch, capsys, thousand.base_dir, "--raw-data",
                                       "-O", "name,state,class")
    assert code == 0 and lines[0] == "debian-12|HALTED|TemplateVM"
    assert methods == ["admin.vm.List"]
