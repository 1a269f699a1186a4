"""Listings read what libvirt knows of the VMs off the loop.

``admin.vm.List`` and ``internal.GetSystemInfo`` show every VM's power state,
``admin.vm.property.GetAll`` a VM's xid and start time, ``admin.vm.CurrentState``
its memory and CPU time. libvirt answers each read over a connection, so those
reads run in a worker thread (a listing asks for all the domains at once): qubesd
answers other calls meanwhile. The tests
hold libvirt's answer until another call was answered (libvirt's test driver,
real file-reflink storage).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.functional.api.conftest import Harness
from tests.support import TIMEOUT, wait_until_async


def list_states(reply: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[2].removeprefix("state=")
            for line in reply.splitlines()}


def system_info_states(reply: str) -> dict[str, str]:
    return {name: info["power_state"] for name, info in json.loads(reply)["domains"].items()}


@pytest.mark.parametrize("method, kind, states_of", [
    ("admin.vm.List", "admin", list_states),
    ("internal.GetSystemInfo", "internal", system_info_states),
])
async def test_a_listing_asks_libvirt_off_the_loop(lifecycle_app: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   method: str, kind: str,
                                                   states_of: Any) -> None:
    app = lifecycle_app
    api = Harness(app, tmp_path)
    await app.domains["work"].start()
    await app.domains["sys-firewall"].pause()
    expected = {vm.name: vm.get_power_state() for vm in app.domains}
    assert expected["work"] == "Running" and expected["sys-firewall"] == "Paused"
    assert expected["debian-12"] == "Halted" and expected["dom0"] == "Running"

    entered, answered = threading.Event(), threading.Event()
    real_state = libvirt.virDomain.state

    def held_state(domain: libvirt.virDomain, flags: int = 0) -> list[int]:
        entered.set()
        assert answered.wait(TIMEOUT), "no call was answered while libvirt was asked"
        return real_state(domain, flags)

    monkeypatch.setattr(libvirt.virDomain, "state", held_state)
    listing = asyncio.create_task(api.call(method, "dom0", kind=kind))
    await wait_until_async(lambda: entered.is_set() or listing.done(), what="the listing")
    assert await api.call("admin.vm.property.Get", "work", "label") == \
        "default=False type=label blue"
    answered.set()
    assert states_of(await listing) == expected


async def test_property_get_all_asks_libvirt_off_the_loop(lifecycle_app: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    app = lifecycle_app
    api = Harness(app, tmp_path)
    await app.domains["work"].start()
    expected = await api.call("admin.vm.property.GetAll", "work")
    assert "\nxid default=True type=int " in expected and "start_time" in expected

    entered, answered = threading.Event(), threading.Event()
    real_active = libvirt.virDomain.isActive

    def held_active(domain: libvirt.virDomain) -> int:
        entered.set()
        assert answered.wait(TIMEOUT), "no call was answered while libvirt was asked"
        return real_active(domain)

    monkeypatch.setattr(libvirt.virDomain, "isActive", held_active)
    get_all = asyncio.create_task(api.call("admin.vm.property.GetAll", "work"))
    await wait_until_async(lambda: entered.is_set() or get_all.done(), what="GetAll")
    assert await api.call("admin.vm.property.Get", "work", "label") == \
        "default=False type=label blue"
    answered.set()
    assert await get_all == expected


async def test_current_state_asks_libvirt_off_the_loop(lifecycle_app: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    app = lifecycle_app
    api = Harness(app, tmp_path)
    await app.domains["work"].start()
    expected = await api.call("admin.vm.CurrentState", "work")
    assert "power_state=Running" in expected

    entered, answered = threading.Event(), threading.Event()
    real_info = libvirt.virDomain.info

    def held_info(domain: libvirt.virDomain) -> list[int]:
        entered.set()
        assert answered.wait(TIMEOUT), "no call was answered while libvirt was asked"
        return real_info(domain)

    monkeypatch.setattr(libvirt.virDomain, "info", held_info)
    current = asyncio.create_task(api.call("admin.vm.CurrentState", "work"))
    await wait_until_async(lambda: entered.is_set() or current.done(), what="CurrentState")
    assert await api.call("admin.vm.property.Get", "work", "label") == \
        "default=False type=label blue"
    answered.set()
    reply = await current
    assert reply.split()[0] == "mem=" + expected.split()[0].removeprefix("mem=")
    assert reply.endswith("power_state=Running")
