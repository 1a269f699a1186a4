"""What libvirt's lifecycle events mean to the model."""

from __future__ import annotations

import pytest

from tests.unit.runtime.support import require_libvirt


@pytest.fixture
def libvirt_module():
    require_libvirt()
    import libvirt

    return libvirt


def test_lifecycle_kinds(libvirt_module) -> None:
    from qubes_core.backend.libvirt_events import lifecycle_kind

    lv = libvirt_module
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_STARTED, lv.VIR_DOMAIN_EVENT_STARTED_BOOTED) == (
        "started", None)
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_STOPPED,
                          lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) == ("stopped", "shutdown")
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_STOPPED,
                          lv.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == ("stopped", "destroyed")
    # A crash (the test driver cannot make one) is a stop, whether the domain is
    # destroyed at once or kept for a dump.
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_STOPPED,
                          lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED) == ("stopped", "crashed")
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_CRASHED,
                          lv.VIR_DOMAIN_EVENT_CRASHED_PANICKED) == ("stopped", "crashed")
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_STOPPED, 999) == ("stopped", "unknown")
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_SUSPENDED,
                          lv.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED) == ("paused", None)
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_RESUMED,
                          lv.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED) == ("unpaused", None)
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_DEFINED, 0) is None
    assert lifecycle_kind(lv.VIR_DOMAIN_EVENT_UNDEFINED, 0) is None


def test_power_states(libvirt_module) -> None:
    from qubes_core.backend.libvirt import POWER_STATES
    from qubes_core.vm.base import POWER_STATES as MODEL_STATES

    lv = libvirt_module
    assert POWER_STATES[lv.VIR_DOMAIN_SHUTDOWN] == "Halting"
    assert POWER_STATES[lv.VIR_DOMAIN_CRASHED] == "Crashed"
    assert POWER_STATES[lv.VIR_DOMAIN_PMSUSPENDED] == "Suspended"
    assert set(POWER_STATES.values()) <= set(MODEL_STATES)
