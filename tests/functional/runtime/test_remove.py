"""Removing a VM against its own start and stop (model, file-reflink, libvirt's test driver).

Each test holds one step of a start or a stop open with a real event handler
that waits, and checks what a removal (or a start) does meanwhile.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from qubes_core import exc
from tests.support import gate_call, gate_event, loop_turns, spy_call, until


def defined_domains(app: Any) -> set[str]:
    return {domain.name() for domain in app.runtime.connection().listAllDomains()}


async def test_remove_is_refused_while_the_vm_starts(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    gate = gate_event(work, "domain-pre-start")
    start = asyncio.create_task(work.start())
    await gate.reached()
    with pytest.raises(exc.QubesVMNotHaltedError, match="it is starting"):
        await work.remove()
    gate.release()
    await asyncio.wait_for(start, 30)
    assert work.get_power_state() == "Running" and "work" in lifecycle_app.domains
    assert work.volumes["private"].is_dirty()
    await work.kill()


async def test_start_waiting_behind_a_removal_is_refused(
        lifecycle_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    vm_dir = work.volumes["private"].block_device().rsplit("/", 1)[0]
    files = gate_call(monkeypatch, work, "remove_from_disk")
    removal = asyncio.create_task(work.remove())
    await files.reached()  # the removal holds the startup lock, files going
    assert work.startup_lock.locked() and "work" not in lifecycle_app.domains
    start = asyncio.create_task(work.start())
    await loop_turns()
    files.release()
    with pytest.raises(exc.QubesVMNotFoundError, match="it was removed"):
        await start
    await removal
    assert "work" not in defined_domains(lifecycle_app)
    assert not os.path.exists(vm_dir)


async def test_a_removed_vm_object_does_not_start(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    await work.remove()
    with pytest.raises(exc.QubesVMNotFoundError):
        await work.start()
    assert "work" not in defined_domains(lifecycle_app)
    assert not work.volumes_in_use


async def test_remove_is_refused_while_the_stop_is_handled(
        lifecycle_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Halted in libvirt, its volumes not yet committed: not removable, and a start
    waits until the stop was handled."""
    work = lifecycle_app.domains["work"]
    work.netvm = None
    await work.start()
    gate = gate_event(work, "domain-shutdown")
    kill = asyncio.create_task(work.kill())
    await gate.reached()
    assert work.get_power_state() == "Halted" and work.volumes_in_use
    with pytest.raises(exc.QubesVMNotHaltedError, match="volumes are in use"):
        await work.remove()
    waiting = spy_call(monkeypatch, lifecycle_app.runtime, "wait_stopped")
    restart = asyncio.create_task(work.start())
    await until(waiting)
    await loop_turns()
    assert not restart.done()  # waits for the stop's handling
    gate.release()
    await asyncio.wait_for(kill, 30)
    await asyncio.wait_for(restart, 30)
    assert work.get_power_state() == "Running"
    await work.kill()
    await work.remove()
    assert "work" not in lifecycle_app.domains


async def test_failed_start_releases_the_volumes(lifecycle_app: Any) -> None:
    work = lifecycle_app.domains["work"]
    work.netvm = None
    squatter = lifecycle_app.runtime.connection().defineXML(
        "<domain type='test'><name>work</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>")
    squatter.create()
    with pytest.raises(exc.QubesVMError, match="another libvirt domain"):
        await work.start()
    assert not work.volumes_in_use
    squatter.destroy()
    await work.remove()
    assert "work" not in lifecycle_app.domains
