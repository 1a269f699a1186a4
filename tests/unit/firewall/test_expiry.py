"""The expiry schedule: rules leave the export and firewall.xml when they expire.

The clock is a :class:`ManualClock`: time moves when the test says, and the
schedule's sleeps end then, so minutes pass in no time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from qubes_core.app import Qubes
from qubes_core.firewall import Rule, parse_api_rules, set_clock
from qubes_core.firewall.expiry import JUMP_CHECK, schedule_of
from qubes_core.firewall.xmlfile import parse
from tests.support import wait_until_async
from tests.unit.firewall.conftest import exported


async def settle(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop (and the worker thread writing firewall.xml) run until
    ``condition`` holds."""
    await wait_until_async(condition, what=what)


def file_rules(vm) -> list[Rule]:
    return parse((vm.dir_path / "firewall.xml").read_bytes())


async def run_network(app: Qubes, *names: str) -> None:
    for name in ("sys-net", "sys-firewall", *names):
        app.switch.power_on(app.domains[name])
    await app.fire_event_async("qubesd-start", server=None)


async def test_rule_leaves_export_and_file_at_its_expiry(net_app: Qubes, clock) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    now = int(clock.time())
    await run_network(net_app, "work")
    try:
        work.firewall.set_rules(parse_api_rules(
            f"action=accept proto=tcp dstports=22 expire={now + 300}\naction=drop\n"))
        assert exported(fw, work)["/0000"] == b"action=accept proto=tcp dstports=22-22"
        schedule = schedule_of(net_app)
        assert schedule.next_expiry() == now + 300
        for _ in range(599):
            clock.advance(0.5)
            for _ in range(10):
                await asyncio.sleep(0)
        assert len(file_rules(work)) == 2  # 299.5 s on: not yet
        assert exported(fw, work)["/0000"].startswith(b"action=accept")
        clock.advance(0.5)  # now == expire
        await settle(lambda: len(file_rules(work)) == 1
                     and exported(fw, work)["/0000"] == b"action=drop",
                     "rule removed from firewall.xml, then from the export")
        assert file_rules(work) == [Rule(action="drop")]
        assert exported(fw, work) == {"": b"", "/policy": b"drop", "/0000": b"action=drop"}
        assert schedule.next_expiry() is None
    finally:
        await net_app.fire_event_async("qubesd-stop")
    assert not schedule_of(net_app).running


async def test_many_rules_expire_in_order(net_app: Qubes, clock) -> None:
    rng = random.Random(6)
    now = int(clock.time())
    vms = [net_app.domains["work"], net_app.domains["personal"]]
    for number in range(8):
        vms.append(net_app.add_new_vm("AppVM", name=f"app{number}", label="red"))
    expiries: dict[str, list[int]] = {}
    for vm in vms:
        times = rng.sample(range(1, 120), 6)
        expiries[vm.name] = times
        vm.firewall.set_rules(
            [Rule(action="accept", proto="tcp", dstports=(port, port), expire=now + delta)
             for port, delta in zip(range(1000, 1006), times, strict=True)]
            + [Rule(action="drop")])
    await run_network(net_app, *[vm.name for vm in vms])
    fw = net_app.domains["sys-firewall"]
    try:
        for elapsed in range(1, 121):
            clock.advance(1)

            def caught_up(elapsed: int = elapsed) -> bool:
                """Written to firewall.xml, and (after that) exported."""
                return all(
                    len(file_rules(vm)) == 1 + sum(t > elapsed for t in expiries[vm.name])
                    and len(exported(fw, vm)) == 3 + sum(t > elapsed for t in expiries[vm.name])
                    for vm in vms)

            await settle(caught_up, f"rules expired at +{elapsed}s")
            for vm in vms:
                live = sorted(t for t in expiries[vm.name] if t > elapsed)
                assert [r.expire - now for r in file_rules(vm) if r.expire] == [
                    t for t in expiries[vm.name] if t > elapsed]
                assert len(exported(fw, vm)) == 3 + len(live)  # done, policy, rules
    finally:
        await net_app.fire_event_async("qubesd-stop")
    assert all(file_rules(vm) == [Rule(action="drop")] for vm in vms)


async def test_rule_that_expired_while_down_is_removed_at_start(net_app: Qubes, clock) -> None:
    work = net_app.domains["work"]
    now = int(clock.time())
    work.firewall.set_rules(parse_api_rules(
        f"action=accept dsthost=10.0.0.0/8 expire={now + 60}\n"
        f"action=accept dsthost=10.9.0.0/16 expire={now + 600}\naction=drop\n"))
    path = net_app.store.path
    net_app.close()  # qubesd stops
    clock.advance(120)
    with Qubes(path, runtime=net_app.switch) as again:
        set_clock(again, clock)
        assert len(file_rules(again.domains["work"])) == 3  # nothing runs while it is down
        await again.fire_event_async("qubesd-start", server=None)
        try:
            vm = again.domains["work"]
            assert [r.dsthost for r in file_rules(vm)] == ["10.9.0.0/16", None]
            assert schedule_of(again).next_expiry() == now + 600
            clock.advance(480)
            await settle(lambda: len(file_rules(vm)) == 1, "second rule expired")
        finally:
            await again.fire_event_async("qubesd-stop")


async def test_clock_jump_forward_rebuilds_and_expires(net_app: Qubes, clock) -> None:
    work, fw = net_app.domains["work"], net_app.domains["sys-firewall"]
    now = int(clock.time())
    work.firewall.set_rules(parse_api_rules(f"action=accept expire={now + 3600}\naction=drop\n"))
    await run_network(net_app, "work")
    schedule = schedule_of(net_app)
    rebuilds = schedule.rebuilds
    try:
        clock.jump(7200)  # the wall clock is set two hours on
        clock.advance(JUMP_CHECK)  # and the schedule's next check comes
        await settle(lambda: len(file_rules(work)) == 1
                     and exported(fw, work)["/0000"] == b"action=drop", "expired after the jump")
        assert schedule.rebuilds == rebuilds + 1
        assert exported(fw, work)["/0000"] == b"action=drop"
    finally:
        await net_app.fire_event_async("qubesd-stop")


async def test_clock_jump_back_does_not_expire_early(net_app: Qubes, clock) -> None:
    work = net_app.domains["work"]
    now = int(clock.time())
    work.firewall.set_rules(parse_api_rules(f"action=accept expire={now + 10}\naction=drop\n"))
    await run_network(net_app, "work")
    schedule = schedule_of(net_app)
    try:
        clock.jump(-3600)
        for _ in range(30):
            clock.advance(1)
            await settle(lambda: True, "turn")
            for _ in range(10):
                await asyncio.sleep(0)
        assert len(file_rules(work)) == 2  # 30 s passed, but the wall clock says 1 h early
        assert schedule.rebuilds >= 2
        clock.jump(3600)
        clock.advance(JUMP_CHECK)
        await settle(lambda: len(file_rules(work)) == 1, "expired once the clock is right")
    finally:
        await net_app.fire_event_async("qubesd-stop")


async def test_new_earlier_expiry_wakes_the_schedule(net_app: Qubes, clock) -> None:
    work, personal = net_app.domains["work"], net_app.domains["personal"]
    now = int(clock.time())
    work.firewall.set_rules(parse_api_rules(f"action=accept expire={now + 3600}\n"))
    await run_network(net_app)
    try:
        await settle(lambda: schedule_of(net_app).next_expiry() == now + 3600, "scheduled")
        personal.firewall.set_rules(parse_api_rules(f"action=accept expire={now + 5}\n"))
        assert schedule_of(net_app).next_expiry() == now + 5
        clock.advance(5)
        await settle(lambda: file_rules(personal) == [], "earlier rule expired")
        assert len(file_rules(work)) == 1
    finally:
        await net_app.fire_event_async("qubesd-stop")


async def test_schedule_without_expiring_rules_sleeps(net_app: Qubes, clock) -> None:
    await run_network(net_app)
    try:
        schedule = schedule_of(net_app)
        assert schedule.running and schedule.next_expiry() is None
        clock.advance(10_000)
        await settle(lambda: True, "turn")
        assert schedule.running
    finally:
        await net_app.fire_event_async("qubesd-stop")
