"""A write whose save fails: the caller is told the change is in effect and not yet
saved, qubes.xml stays whole, and qubesd saves the change by itself once it can.

On a small loop-mounted ext4 filesystem: filled up, and with an immutable
qubes.xml (``chattr +i``: a read-only file even for root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from tests.conftest import add_basic_vms
from tests.functional.api.conftest import Harness
from tests.functional.storage.conftest import loop_filesystem, require_loop_mounts
from tests.requirements import require_tool
from tests.support import wait_until_async

MiB = 1024**2


def _on_disk(path: Path) -> Qubes:
    return Qubes(path, lock=False)


def _fill(directory: Path) -> Path:
    """Write until the filesystem is full; the filler file."""
    filler = directory / "filler"
    block = b"\xa5" * MiB
    with open(filler, "wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(block)
                handle.flush()
        with contextlib.suppress(OSError):
            while True:  # the last partial blocks
                handle.write(b"\xa5" * 4096)
                handle.flush()
        with contextlib.suppress(OSError):
            os.fsync(handle.fileno())
    probe = directory / "probe"
    with pytest.raises(OSError) as full, open(probe, "wb") as handle:
        handle.write(b"x" * 65536)
        handle.flush()
        os.fsync(handle.fileno())
    probe.unlink(missing_ok=True)
    assert full.value.errno == errno.ENOSPC
    return filler


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    require_loop_mounts("ext4")
    with loop_filesystem("ext4", tmp_path, size=16 * MiB) as mount:
        yield mount


async def _api(base: Path) -> Harness:
    app = Qubes.create_empty_store(base / "qubes.xml", setup_check="auto")
    add_basic_vms(app)
    app.save()
    return Harness(app, base)


async def _check_failed_then_saved(api: Harness, fix: Any, reason: str) -> None:
    path = api.app.store.path
    before = path.read_bytes()
    with pytest.raises(exc.QubesStoreError, match=reason) as refused:
        await api.call("admin.vm.property.Set", "work", "memory", "800")
    message = str(refused.value)
    assert "in effect" in message and "saves it as soon as it can" in message
    # In effect: reads show it; on disk: the old file, whole.
    assert (await api.call("admin.vm.property.Get", "work", "memory")).endswith(" 800")
    assert path.read_bytes() == before
    assert _on_disk(path).domains["work"].memory != 800
    assert api.server.commits.unsaved
    fix()
    # Nobody writes again: qubesd saves the change by itself (the file is renamed
    # into place before the retry, back on the loop, marks the change saved).
    await wait_until_async(lambda: not api.server.commits.unsaved, what="the retried save")
    assert _on_disk(path).domains["work"].memory == 800
    await api.call("admin.vm.property.Set", "work", "vcpus", "3")
    assert _on_disk(path).domains["work"].vcpus == 3


async def test_a_full_disk(small_fs: Path) -> None:
    api = await _api(small_fs)
    try:
        filler = _fill(small_fs)
        await _check_failed_then_saved(api, filler.unlink, "No space left on device")
    finally:
        await api.server.stop()
        api.app.close()


async def test_an_immutable_qubes_xml(small_fs: Path) -> None:
    require_tool("chattr")
    api = await _api(small_fs)
    path = api.app.store.path
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        await _check_failed_then_saved(
            api, lambda: subprocess.run(["chattr", "-i", str(path)], check=True),
            "Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)
        await api.server.stop()
        api.app.close()
