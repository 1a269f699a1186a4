"""Choosing a runtime by name, and what a VM may do without one."""

from __future__ import annotations

import os
from typing import Any

import pytest

from qubes_core import exc
from qubes_core.backend import OfflineRuntime, default_runtime_name, make_runtime
from tests.requirements import require
from tests.unit.runtime.support import require_libvirt


def test_offline_by_name() -> None:
    runtime = make_runtime("offline")
    assert isinstance(runtime, OfflineRuntime)
    assert runtime.name == "offline"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(exc.QubesValueError, match=r"no such runtime: 'qemu'.*offline, test, xen"):
        make_runtime("qemu")


def test_offline_takes_no_options() -> None:
    with pytest.raises(exc.QubesValueError, match="uri"):
        make_runtime("offline", uri="test:///default")


def test_libvirt_uris() -> None:
    require_libvirt()
    test = make_runtime("test")
    xen = make_runtime("xen")
    custom = make_runtime("test", uri="test:///default", event_timeout=1.5)
    assert (test.name, test.uri, test.flavour) == ("test", "test:///default", "test")
    assert (xen.name, xen.uri, xen.flavour) == ("xen", "xen:///", "xen")
    assert custom.event_timeout == 1.5


def test_default_is_test_without_xen(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever this host is, pretend /proc/xen is missing.
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda path: path != "/proc/xen" and real_exists(path))
    assert default_runtime_name() == "test"


def test_default_is_xen_on_a_xen_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # /proc/xen cannot be made here: pretend the host is Xen's dom0.
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda path: path == "/proc/xen" or real_exists(path))
    assert default_runtime_name() == "xen"


def test_xen_without_xen_says_so(basic_app: Any) -> None:
    require_libvirt()
    require(not os.path.exists("/proc/xen"), "this host runs Xen: xen:/// connects here")
    runtime = make_runtime("xen")
    with pytest.raises(exc.QubesException, match=r"cannot connect to libvirt at xen:///"):
        runtime.state(basic_app.domains["work"])


async def test_offline_runtime_refuses_to_run_vms(basic_app: Any) -> None:
    work = basic_app.domains["work"]
    assert work.get_power_state() == "Halted"
    assert work.start_time is None
    with pytest.raises(exc.QubesVMError, match=r"cannot start work: .*offline.*--runtime"):
        await work.start()
    # Nothing was started on the way: the netvm chain is untouched.
    assert basic_app.domains["sys-firewall"].get_power_state() == "Halted"
    with pytest.raises(exc.QubesVMError, match="cannot kill work"):
        await work.kill()


def test_current_state_of_a_halted_vm_is_zero(basic_app: Any) -> None:
    state = OfflineRuntime().current_state(basic_app.domains["work"])
    assert state == {"mem": 0, "mem_static_max": 0, "cputime": 0}
