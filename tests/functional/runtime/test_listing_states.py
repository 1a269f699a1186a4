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
from collections.abc import Awaitable
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


async def answered_while_libvirt_waits(api: Harness, monkeypatch: pytest.MonkeyPatch,
                                       libvirt_method: str, call: Awaitable[str]) -> str:
    """``call``'s reply, made while libvirt's ``virDomain.<libvirt_method>`` is held until
    qubesd answered another call: an answer that only comes if the read left the loop."""
    entered, answered = threading.Event(), threading.Event()
    real = getattr(libvirt.virDomain, libvirt_method)

    def held(domain: libvirt.virDomain, *args: Any) -> Any:
        entered.set()
        assert answered.wait(TIMEOUT), "no call was answered while libvirt was asked"
        return real(domain, *args)

    monkeypatch.setattr(libvirt.virDomain, libvirt_method, held)
    task = asyncio.ensure_future(call)
    await wait_until_async(lambda: entered.is_set() or task.done(),
                           what=f"libvirt's {libvirt_method}")
    assert await api.call("admin.vm.property.Get", "work", "label") == \
        "default=False type=label blue"
    answered.set()
    return await task


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

    listing = await answered_while_libvirt_waits(api, monkeypatch, "state",
                                                 api.call(method, "dom0", kind=kind))
    assert states_of(listing) == expected


def whole(reply: str) -> Any:
    return reply


def figures(reply: str) -> Any:
    """mem and mem_static_max, and the power state (cputime may have moved on)."""
    words = reply.split()
    return words[:2], words[-1]


@pytest.mark.parametrize("method, held, shown, compared", [
    ("admin.vm.property.GetAll", "isActive", "\nxid default=True type=int ", whole),
    ("admin.vm.CurrentState", "info", " power_state=Running", figures),
])
async def test_a_vm_read_asks_libvirt_off_the_loop(lifecycle_app: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   method: str, held: str, shown: str,
                                                   compared: Any) -> None:
    app = lifecycle_app
    api = Harness(app, tmp_path)
    await app.domains["work"].start()
    expected = await api.call(method, "work")
    assert shown in expected

    reply = await answered_while_libvirt_waits(api, monkeypatch, held,
                                               api.call(method, "work"))
    assert compared(reply) == compared(expected)
