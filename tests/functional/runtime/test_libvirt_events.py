"""Events and state come from libvirt itself, also for changes made outside the model."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import libvirt
import pytest

from qubes_core import exc
from qubes_core.backend import make_runtime
from qubes_core.backend.domain_xml import render_domain_xml
from qubes_core.backend.libvirt_events import event_loop
from tests.support import fired, until
from tests.unit.runtime.support import TEST_DRIVER_DOMAIN, EventLog


def outside_connection() -> libvirt.virConnect:
    """Another client of the same test driver state (like virsh would be on Xen)."""
    return libvirt.open("test:///default")


async def test_destroy_from_outside_is_reported_as_a_stop(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    await work.start()
    log = EventLog([work], "domain-shutdown")
    stopped = fired(work, "domain-shutdown")
    conn = outside_connection()
    try:
        conn.lookupByName("work").destroy()
        await until(stopped)
    finally:
        conn.close()
    assert log.records == [("work", "domain-shutdown", {"reason": "destroyed"})]
    assert work.get_power_state() == "Halted"
    assert not work.volumes["private"].is_dirty()


async def test_events_come_through_the_running_loop_not_a_thread(lifecycle_app: Any) -> None:
    """libvirt's callbacks run on the asyncio loop (libvirtaio), and each test's new loop
    gets them: no thread of ours waits for libvirt."""
    work = lifecycle_app.domains["work"]
    await work.start()
    assert event_loop() is asyncio.get_running_loop()
    stopped = fired(work, "domain-shutdown")
    conn = outside_connection()
    try:
        conn.lookupByName("work").destroy()
        await until(stopped)
    finally:
        conn.close()
    assert not [thread for thread in threading.enumerate() if "libvirt" in thread.name]


async def test_pause_from_outside_is_seen_at_once_and_reported(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    await work.start()
    paused = fired(work, "domain-paused")
    unpaused = fired(work, "domain-unpaused")
    conn = outside_connection()
    try:
        domain = conn.lookupByUUIDString(str(work.uuid))
        domain.suspend()
        # Nothing is cached: the state is libvirt's, before any event arrives.
        assert work.get_power_state() == "Paused"
        await until(paused)
        domain.resume()
        assert work.get_power_state() == "Running"
        await until(unpaused)
    finally:
        conn.close()


async def test_domains_that_are_not_ours_are_ignored(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    log = EventLog(lifecycle_app.domains, "domain-start", "domain-paused", "domain-unpaused",
                   "domain-shutdown")
    await work.start()
    conn = outside_connection()
    try:
        foreign = conn.lookupByName(TEST_DRIVER_DOMAIN)
        foreign.suspend()
        foreign.resume()
        stray = conn.defineXML("<domain type='test'><name>stray</name><memory>1024</memory>"
                               "<os><type>hvm</type></os></domain>")
        stray.create()
        stray.destroy()
    finally:
        conn.close()
    # A change of ours after them: once it is reported, theirs were handled too.
    await work.kill()
    assert log.records == [("work", "domain-start", {}),
                           ("work", "domain-shutdown", {"reason": "destroyed"})]
    assert [vm.name for vm in lifecycle_app.domains if vm.get_power_state() != "Halted"] == [
        "dom0"]


async def test_removed_vm_loses_its_domain(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    await work.start()
    await work.kill()
    conn = lifecycle_app.runtime.connection()
    assert conn.lookupByUUIDString(str(work.uuid)).name() == "work"
    await work.storage.remove()
    del lifecycle_app.domains["work"]
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByUUIDString(str(work.uuid))


async def test_wait_stopped_gives_up_on_a_running_vm(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    await work.start()
    assert await lifecycle_app.runtime.wait_stopped(work, 0.05) is False
    assert work.get_power_state() == "Running"


async def test_a_vm_that_ignores_shutdown_times_out(lifecycle_app: Any) -> None:
    """A guest may ignore the request (Xen's, which cannot run here, lets it)."""
    runtime = lifecycle_app.runtime
    work = lifecycle_app.domains["work"]
    work.netvm = None
    await work.start()
    asked: list[str] = []

    async def ignore(vm: Any) -> None:
        asked.append(vm.name)  # the request reaches the guest, which does nothing

    runtime.shutdown = ignore
    try:
        with pytest.raises(exc.QubesVMShutdownTimeoutError,
                           match=r"work did not shut down within 0.1 s \(kill it"):
            await work.shutdown(wait=True, timeout=0.1)
    finally:
        del runtime.shutdown
    assert asked == ["work"]
    assert work.get_power_state() == "Running"
    await work.kill()
    assert work.get_power_state() == "Halted"


async def test_a_late_libvirt_event_is_not_reported_twice(lifecycle_app: Any) -> None:
    """When libvirt's event is late we report the change ourselves, and only once."""
    runtime = lifecycle_app.runtime
    work = lifecycle_app.domains["work"]
    work.netvm = None
    log = EventLog([work], "domain-start", "domain-shutdown")
    await work.start()
    domain_uuid = str(work.uuid)
    # Our own report of a stop, as after a timeout, then libvirt's real one.
    runtime.connection().lookupByUUIDString(domain_uuid).destroy()
    await runtime._deliver(domain_uuid, "stopped", "destroyed", synthesized=True)
    assert await runtime.wait_stopped(work, 10)
    await work.start()
    assert log.of("work") == ["domain-start", "domain-shutdown", "domain-start"]


async def test_two_runtimes_share_the_test_driver(lifecycle_app: Any) -> None:
    """Each runtime reports only on the apps bound to it."""
    other = make_runtime("test")
    try:
        work = lifecycle_app.domains["work"]
        work.netvm = None
        await work.start()
        assert other.state(work) == "Running"
        assert other.start_time(work) == pytest.approx(work.start_time)
        log = EventLog([work], "domain-shutdown")
        await work.kill()
        assert log.of("work") == ["domain-shutdown"]
    finally:
        other.close()


async def test_a_bound_app_hears_of_vms_started_elsewhere(lifecycle_app: Any) -> None:
    """After ``bind`` (what qubesd does at start), no call of ours is needed for events."""
    runtime = lifecycle_app.runtime
    runtime.bind(lifecycle_app)
    work = lifecycle_app.domains["work"]
    started = fired(work, "domain-start")
    stopped = fired(work, "domain-shutdown")
    conn = outside_connection()
    try:
        domain = conn.defineXML(render_domain_xml(work, "test"))
        domain.create()
        await until(started)
        assert work.get_power_state() == "Running"
        domain.shutdown()
        await until(stopped)
    finally:
        conn.close()
    assert work.get_power_state() == "Halted"
