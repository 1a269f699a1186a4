"""Suspend/Resume, Stats, Console and the pool and volume calls of Qubes 4.4, against
libvirt's test driver and a file-reflink pool: bad input gets a one-line refusal and
changes nothing (qubes.xml byte for byte, the volume's image not rewritten)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from qubes_core import exc, protocol
from tests.unit.runtime.support import lifecycle_app, runtime  # noqa: F401

from .conftest import Harness, file_digest


@pytest.fixture
async def api(lifecycle_app: Any, tmp_path: Path) -> Harness:  # noqa: F811
    lifecycle_app.save()
    return Harness(lifecycle_app, tmp_path)


def state_of(api: Harness) -> tuple[str, tuple[int, int, int]]:
    """qubes.xml and work's private image (a commit renames a new file over it, a write
    changes its mtime): what a refused call must leave as it was."""
    image = os.stat(api.app.domains["work"].volumes["private"].export_path())
    return (file_digest(Path(api.app.store.path)),
            (image.st_ino, image.st_size, image.st_mtime_ns))


@pytest.mark.parametrize("method, dest, arg, payload, error, message", [
    ("admin.vm.Suspend", "work", "", "", exc.QubesVMNotRunningError, "it is Halted"),
    ("admin.vm.Resume", "work", "", "", exc.QubesVMNotPausedError, "it is Halted"),
    ("admin.vm.Suspend", "dom0", "", "", exc.QubesException, "dom0 cannot suspend"),
    ("admin.vm.Console", "dom0", "", "", exc.QubesVMError, "does not apply to dom0"),
    ("admin.vm.Console", "work", "", "", exc.QubesVMNotRunningError, "not running"),
    ("admin.pool.UsageDetails", "dom0", "ghost", "", exc.QubesValueError, "no such pool"),
    ("admin.pool.UsageDetails", "dom0", "", "", exc.ProtocolError, "needs an argument"),
    ("admin.pool.volume.List", "dom0", "ghost", "", exc.QubesValueError, "no such pool"),
    ("admin.pool.Set.ephemeral_volatile", "dom0", "varlibqubes", "maybe",
     exc.QubesValueError, "not a boolean"),
    ("admin.pool.Set.ephemeral_volatile", "dom0", "varlibqubes", b"\xff",
     exc.QubesException, "ephemeral_volatile"),
    ("admin.pool.Set.ephemeral_volatile", "dom0", "ghost", "True",
     exc.QubesValueError, "no such pool"),
    ("admin.vm.volume.Set.ephemeral", "work", "private", "True",
     exc.QubesValueError, "can be ephemeral"),
    ("admin.vm.volume.Set.ephemeral", "work", "root", "True",
     exc.QubesValueError, "can be ephemeral"),
    ("admin.vm.volume.Set.ephemeral", "work", "volatile", "2",
     exc.QubesValueError, "not a boolean"),
    ("admin.vm.volume.Set.ephemeral", "work", "ghost", "True",
     exc.QubesValueError, "has no volume"),
    ("admin.vm.volume.Clear", "work", "ghost", "", exc.QubesValueError, "has no volume"),
    ("admin.vm.volume.Clear", "dom0", "private", "", exc.QubesVMError, "dom0"),
    ("admin.vm.volume.ImportWithSize", "work", "private", b"4096",
     exc.QubesValueError, "size in bytes and a newline"),
    ("admin.vm.volume.ImportWithSize", "work", "private", b"-5\nab",
     exc.QubesValueError, "size in bytes and a newline"),
    ("admin.vm.volume.ImportWithSize", "work", "private", b"\xd9\xa1\xd9\xa2\nab",
     exc.QubesValueError, "size in bytes and a newline"),
    ("admin.vm.volume.ImportWithSize", "work", "private", b"9" * 30 + b"\n",
     exc.QubesValueError, "size in bytes and a newline"),
    ("admin.vm.volume.ImportWithSize", "work", "private", b"2\nabc",
     exc.QubesValueError, "do not fit"),
    ("admin.vm.volume.ImportWithSize", "work", "private", b"99999999999999999999\n",
     exc.QubesException, "private"),
])
async def test_refused_changes_nothing(api: Harness, method: str, dest: str, arg: str,
                                       payload: str | bytes, error: type, message: str
                                       ) -> None:
    before = state_of(api)
    with pytest.raises(error, match=message):
        await api.call(method, dest, arg, payload)
    assert state_of(api) == before


@pytest.mark.parametrize("method, arg, payload", [
    ("admin.vm.volume.Clear", "private", ""),
    ("admin.vm.volume.ImportWithSize", "private", "4096\nabc"),
    ("admin.vm.volume.Set.ephemeral", "volatile", "True"),
])
async def test_volume_calls_refuse_a_running_vm(api: Harness, method: str, arg: str,
                                                payload: str) -> None:
    await api.call("admin.vm.Start", "work")
    try:
        before = file_digest(Path(api.app.store.path))
        with pytest.raises(exc.QubesVMNotHaltedError, match="while it runs"):
            await api.call(method, "work", arg, payload)
        assert file_digest(Path(api.app.store.path)) == before
    finally:
        await api.call("admin.vm.Kill", "work")


async def test_suspend_of_a_paused_vm_keeps_it_paused(api: Harness) -> None:
    await api.call("admin.vm.Start", "work")
    try:
        await api.call("admin.vm.Pause", "work")
        assert await api.call("admin.vm.Suspend", "work") == ""
        assert api.app.domains["work"].get_power_state() == "Paused"
        assert await api.call("admin.vm.Resume", "work") == ""
        assert api.app.domains["work"].get_power_state() == "Running"
    finally:
        await api.call("admin.vm.Kill", "work")


async def test_ephemeral_settings_persist(api: Harness) -> None:
    await api.call("admin.pool.Set.ephemeral_volatile", "dom0", "varlibqubes", "True")
    await api.call("admin.vm.volume.Set.ephemeral", "sys-net", "volatile", "False")
    reloaded = type(api.app)(api.app.store.path, lock=False)
    try:
        assert reloaded.pools["varlibqubes"].ephemeral_volatile is True
        assert reloaded.domains["work"].volumes["volatile"].ephemeral is True
        assert reloaded.domains["sys-net"].volumes["volatile"].ephemeral is False
    finally:
        reloaded.close()


async def test_stats_of_one_vm_only(api: Harness) -> None:
    """With a VM as destination, only that VM's figures come, every stats_interval."""
    api.app.stats_interval = 1
    for name in ("sys-net", "work"):
        await api.call("admin.vm.Start", name)
    await api.server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(
            str(api.server.paths.admin_socket))
        writer.write(protocol.encode_request("admin.vm.Stats", "dom0", "work"))
        writer.write_eof()
        subjects = []
        for _ in range(3):  # connection-established, then two rounds
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"1\x00"
            record = await asyncio.wait_for(reader.readuntil(b"\x00\x00"), 10)
            subjects.append(record.split(b"\x00")[0].decode())
        assert subjects == ["", "work", "work"]
        writer.close()
    finally:
        await api.server.stop()
        for name in ("sys-net", "work"):
            await api.call("admin.vm.Kill", name)
