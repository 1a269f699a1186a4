"""VM lifecycle end to end: model, file-reflink storage and a runtime.

The tests that hold for any runtime run on libvirt's test driver and on the sandbox
(VMs that really run, on a bookworm image); those about libvirt itself (its domain
XML, a squatting domain, a shutdown that is immediate) run on the test driver only.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from qubes_core import exc
from qubes_core.app import Qubes
from tests.integration.support import bookworm_image, sandbox_app  # noqa: F401
from tests.support import wait_until_async
from tests.unit.runtime.support import EventLog, squat
from tests.unit.runtime.support import lifecycle_app as libvirt_app  # noqa: F401

LIBVIRT_ONLY = pytest.mark.parametrize("lifecycle_app", ["test"], indirect=True)

LIFECYCLE_EVENTS = ("domain-pre-start", "domain-start", "domain-qdb-create", "domain-stopped",
                    "domain-shutdown", "domain-paused", "domain-unpaused",
                    "domain-start-failed")


@pytest.fixture(params=["test", "sandbox"])
def lifecycle_app(request: pytest.FixtureRequest) -> Any:
    """The basic installation on libvirt's test driver, or on the sandbox."""
    return request.getfixturevalue("sandbox_app" if request.param == "sandbox"
                                   else "libvirt_app")


def running(app: Any) -> list[str]:
    return sorted(vm.name for vm in app.domains if vm.qid != 0 and vm.get_power_state()
                  != "Halted")


async def test_start_brings_up_the_netvm_chain_first(lifecycle_app: Any) -> None:
    log = EventLog(lifecycle_app.domains, *LIFECYCLE_EVENTS)
    work = lifecycle_app.domains["work"]
    await work.start()
    assert running(lifecycle_app) == ["sys-firewall", "sys-net", "work"]
    assert log.names("domain-start") == ["sys-net", "sys-firewall", "work"]
    # Every VM asks first (pre-start), then gets its QubesDB, then runs.
    assert log.of("work") == ["domain-pre-start", "domain-qdb-create", "domain-start"]
    assert log.of("sys-net") == ["domain-pre-start", "domain-qdb-create", "domain-start"]
    assert lifecycle_app.domains["debian-12"].get_power_state() == "Halted"


async def test_shutdown_reports_the_reason_and_commits_storage(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    private = work.volumes["private"]
    log = EventLog([work], *LIFECYCLE_EVENTS)
    await work.start()
    assert private.is_dirty()
    assert os.path.exists(private.block_device())
    await work.shutdown(wait=True)
    assert work.get_power_state() == "Halted"
    assert not private.is_dirty()
    stops = {event: kwargs for _, event, kwargs in log.records
             if event in ("domain-stopped", "domain-shutdown")}
    assert stops == {"domain-stopped": {"reason": "shutdown"},
                     "domain-shutdown": {"reason": "shutdown"}}


async def test_kill_returns_after_the_stop_was_handled(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    log = EventLog([work], "domain-shutdown")
    await work.start()
    await work.kill()
    assert work.get_power_state() == "Halted"
    assert log.records == [("work", "domain-shutdown", {"reason": "destroyed"})]
    assert not work.volumes["private"].is_dirty()
    # The netvms were not touched.
    assert running(lifecycle_app) == ["sys-firewall", "sys-net"]


async def test_shutdown_without_wait_is_reported_later(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    stopped = asyncio.Event()
    work.add_handler("domain-shutdown", lambda vm, event, **kw: stopped.set())
    await work.start()
    await work.shutdown()
    await asyncio.wait_for(stopped.wait(), 10)
    assert work.get_power_state() == "Halted"


@LIBVIRT_ONLY
async def test_start_right_after_shutdown_keeps_events_in_order(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    log = EventLog([work], "domain-start", "domain-shutdown")
    await work.start()
    await work.shutdown()
    await work.start()  # the stop may still be on its way from libvirt
    assert log.of("work") == ["domain-start", "domain-shutdown", "domain-start"]
    assert work.volumes["private"].is_dirty()
    await work.kill()


async def test_pause_and_unpause(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    log = EventLog([work], "domain-paused", "domain-unpaused")
    await work.start()
    await work.pause()
    assert work.get_power_state() == "Paused"
    assert work.is_running()
    await work.unpause()
    assert work.get_power_state() == "Running"
    assert log.of("work") == ["domain-paused", "domain-unpaused"]


async def test_start_time_is_read_from_the_runtime(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    assert work.start_time is None
    before = time.time()
    await work.start()
    after = time.time()
    assert before <= work.start_time <= after
    first = work.start_time
    await work.kill()
    assert work.start_time is None
    await wait_until_async(lambda: time.time() > first, what="the clock passing the first start")
    await work.start()
    assert work.start_time > first
    with pytest.raises(exc.QubesPropertyValueError, match="read-only"):
        work.start_time = 5.0


async def test_start_time_is_known_when_domain_start_fires(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    seen: list[Any] = []
    work.add_handler("domain-start", lambda vm, event, **kw: seen.append(vm.start_time))
    await work.start()
    assert seen == [work.start_time]
    assert seen[0] is not None


async def test_qubesdb_is_recreated_at_start(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.qdb.write("/left-over", "from before")
    work.features["service.cups"] = True
    await work.start()
    assert work.qdb.read("/left-over") is None
    assert work.qdb.read("/name") == b"work"
    assert work.qdb.read("/qubes-vm-type") == b"AppVM"
    assert work.qdb.read("/qubes-vm-persistence") == b"rw-only"
    assert work.qdb.read("/qubes-base-template") == b"debian-12"
    assert work.qdb.read("/qubes-ip") == work.ip.encode()
    assert work.qdb.read("/qubes-gateway") == lifecycle_app.domains["sys-firewall"].ip.encode()
    # The services extension reacted to domain-qdb-create.
    assert work.qdb.read("/qubes-service/cups") == b"1"
    template = lifecycle_app.domains["debian-12"]
    template.netvm = None
    await template.start()
    assert template.qdb.read("/qubes-vm-persistence") == b"full"
    assert template.qdb.read("/qubes-ip") is None


async def test_concurrent_starts_share_the_netvm(lifecycle_app: Any) -> None:
    other = lifecycle_app.add_new_vm("AppVM", name="personal", label="green")
    await other.storage.create()
    log = EventLog(lifecycle_app.domains, "domain-start")
    await asyncio.gather(lifecycle_app.domains["work"].start(), other.start())
    assert running(lifecycle_app) == ["personal", "sys-firewall", "sys-net", "work"]
    assert log.names("domain-start").count("sys-net") == 1
    assert log.names("domain-start").count("sys-firewall") == 1


async def test_a_netvm_that_cannot_start_stops_the_start(lifecycle_app: Any) -> None:
    net = lifecycle_app.domains["sys-net"]
    work = lifecycle_app.domains["work"]

    def veto(vm: Any, event: str, **kwargs: Any) -> None:
        raise exc.QubesVMError(vm, "no network card")

    net.add_handler("domain-pre-start", veto)
    with pytest.raises(exc.QubesVMError,
                       match=r"cannot start work: its netvm sys-firewall cannot start: .*"
                             r"its netvm sys-net cannot start: no network card"):
        await work.start()
    assert running(lifecycle_app) == []
    assert not work.volumes["private"].is_dirty()


@LIBVIRT_ONLY
async def test_failed_start_undoes_storage(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    failures = EventLog([work], "domain-start-failed")
    # A stale domain of the same name that runs blocks the start in libvirt.
    conn = lifecycle_app.runtime.connection()
    squatter = conn.defineXML(
        "<domain type='test'><name>work</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>")
    squatter.create()
    with pytest.raises(exc.QubesVMError, match="another libvirt domain named 'work'"):
        await work.start()
    assert work.get_power_state() == "Halted"
    assert not work.volumes["private"].is_dirty()
    assert failures.of("work") == ["domain-start-failed"]
    # Once it is gone (halted), the stale definition is replaced.
    squatter.destroy()
    await work.start()
    assert work.get_power_state() == "Running"
    assert conn.lookupByName("work").UUIDString() == str(work.uuid)


@LIBVIRT_ONLY
async def test_running_domain_matches_the_vm(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.memory = 700
    work.vcpus = 1
    await work.start()
    domain = lifecycle_app.runtime.connection().lookupByUUIDString(str(work.uuid))
    xml = etree.fromstring(domain.XMLDesc().encode())
    assert xml.findtext("name") == "work"
    assert xml.findtext("currentMemory") == str(700 * 1024)
    assert xml.findtext("vcpu") == "1"
    sources = {disk.find("target").get("dev"): disk.find("source").get("dev")
               for disk in xml.findall("devices/disk")}
    assert sources["xvdb"] == work.volumes["private"].block_device()
    assert sources["xvda"] == work.volumes["root"].block_device()
    state = lifecycle_app.runtime.current_state(work)
    assert state["mem"] == 700 * 1024
    assert state["mem_static_max"] >= state["mem"]


@LIBVIRT_ONLY
async def test_dispvm_with_auto_cleanup_is_removed_when_it_stops(lifecycle_app: Any) -> None:
    app = lifecycle_app
    work = app.domains["work"]
    work.template_for_dispvms = True
    disp = app.add_new_vm("DispVM", template=work, label="red", auto_cleanup=True)
    name = disp.name
    await disp.storage.create()
    log = EventLog([disp], "domain-start", "domain-shutdown")
    await disp.start()
    root_image = disp.volumes["root"].block_device()
    assert os.path.exists(root_image)
    app.save()
    await disp.kill()
    assert log.of(name) == ["domain-start", "domain-shutdown"]
    assert name not in app.domains
    assert not os.path.exists(root_image)
    # qubes.xml on disk no longer has it.
    tree = etree.parse(str(app.store.path))
    names = tree.xpath("//domain/properties/property[@name='name']/text()")
    assert name not in names and "work" in names
    # Nor does libvirt.
    assert all(d.name() != name for d in app.runtime.connection().listAllDomains())


async def test_dispvm_cleanup_defers_saving_to_a_save_request_handler(
        lifecycle_app: Any) -> None:
    app = lifecycle_app
    work = app.domains["work"]
    work.template_for_dispvms = True
    disp = app.add_new_vm("DispVM", template=work, label="red", auto_cleanup=True)
    await disp.storage.create()
    app.save()
    requests: list[str] = []

    async def saver(subject: Any, event: str, **kwargs: Any) -> bool:
        requests.append(event)
        return True

    app.add_handler("save-request", saver)
    await disp.start()
    await disp.kill()
    assert requests == ["save-request"]
    assert disp.name not in app.domains
    # The handler said it saved, so the app did not: the file still has the DispVM.
    reloaded = etree.parse(str(app.store.path))
    assert disp.name in reloaded.xpath("//property[@name='name']/text()")


@LIBVIRT_ONLY
async def test_dispvm_with_auto_cleanup_that_fails_to_start_is_removed(
        lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.template_for_dispvms = True
    work.netvm = None
    disp = lifecycle_app.add_new_vm("DispVM", template=work, label="red", auto_cleanup=True)
    await disp.storage.create()
    images = Path(lifecycle_app.pools["varlibqubes"].config["dir_path"]) / "appvms" / disp.name
    seen: list[list[str]] = []
    disp.add_handler("domain-qdb-create",  # after its volumes started
                     lambda vm, event, **kw: seen.append(sorted(p.name for p in images.iterdir())))
    squat(lifecycle_app, disp.name)  # a running domain of its name: libvirt refuses
    with pytest.raises(exc.QubesVMError, match="another libvirt domain"):
        await disp.start()
    assert "private-dirty.img" in seen[0]
    assert disp.name not in lifecycle_app.domains
    assert not images.exists() or list(images.glob("*.img*")) == []


async def test_dispvm_without_auto_cleanup_stays(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.template_for_dispvms = True
    disp = lifecycle_app.add_new_vm("DispVM", template=work, label="red")
    await disp.storage.create()
    await disp.start()
    await disp.shutdown(wait=True)
    assert disp.name in lifecycle_app.domains


async def test_reopened_app_sees_running_vms(lifecycle_app: Any, tmp_path: Any) -> None:
    """State lives in libvirt, not in the model: another app object reads the same."""
    work = lifecycle_app.domains["work"]
    await work.start()
    lifecycle_app.save()
    runtime = lifecycle_app.runtime
    lifecycle_app.close()
    second = Qubes(lifecycle_app.store.path, runtime=runtime)
    try:
        again = second.domains["work"]
        assert again is not work
        assert again.get_power_state() == "Running"
        assert again.start_time == pytest.approx(work.start_time)
        log = EventLog([again], "domain-shutdown")
        await again.kill()
        assert log.of("work") == ["domain-shutdown"]
    finally:
        second.close()
