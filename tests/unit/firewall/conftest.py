"""Fixtures of the firewall unit tests.

Starting a VM needs a hypervisor; these tests stand in for one with
:class:`PowerSwitch`, a runtime whose VMs run when the test says so and which
fires the same events (``domain-qdb-create``, ``domain-start``,
``domain-shutdown``) that the real runtimes fire. Everything else (the model,
firewall.xml on disk, the QubesDB store, the expiry task) is real.
"""

from __future__ import annotations

from typing import Any

import pytest

from qubes_core.app import Qubes
from qubes_core.backend import Runtime
from qubes_core.firewall import ManualClock, set_clock
from qubes_core.qubesdb import InMemoryQubesDB
from tests.conftest import add_basic_vms


class PowerSwitch(Runtime):
    name = "power-switch"

    def __init__(self) -> None:
        self.running: set[str] = set()

    def state(self, vm: Any) -> str:
        return "Running" if vm.qid == 0 or vm.name in self.running else "Halted"

    def start_time(self, vm: Any) -> float | None:
        return None

    def power_on(self, vm: Any) -> None:
        """Start ``vm`` in the lifecycle's order: a new QubesDB while it is still halted,
        then it runs, then ``domain-start``."""
        vm.qdb = InMemoryQubesDB()
        vm.fire_event("domain-qdb-create")
        self.running.add(vm.name)
        vm.fire_event("domain-start")

    def power_off(self, vm: Any) -> None:
        self.running.discard(vm.name)
        vm.fire_event("domain-shutdown", reason="test")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_700_000_000.0)


@pytest.fixture
def net_app(tmp_path, clock: ManualClock):
    """dom0, a template, sys-net -> sys-firewall -> work, personal; clock injected."""
    switch = PowerSwitch()
    app = Qubes.create_empty_store(tmp_path / "qubes.xml", runtime=switch, setup_check="auto")
    set_clock(app, clock)
    add_basic_vms(app)
    app.add_new_vm("AppVM", name="personal", label="yellow")
    app.switch = switch
    app.save()
    yield app
    app.close()


def exported(netvm: Any, vm: Any) -> dict[str, bytes]:
    """What ``netvm``'s QubesDB holds for ``vm`` (keys relative to /qubes-firewall/IP)."""
    base = f"/qubes-firewall/{vm.ip}"
    return {key[len(base):]: value for key, value in netvm.qdb.multiread(base).items()
            if key == base or key.startswith(base + "/")}
