"""Group commit: one save of qubes.xml acknowledges many writes; a failed save fails them.

The server runs in-process on real sockets and writes the real qubes.xml; the
store's ``write`` is wrapped only to count saves and, in one test, to hold a save
or make it fail as a full disk would (a real full filesystem is the last test).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import subprocess
import threading
from pathlib import Path

import pytest
from lxml import etree

from qubes_core import exc
from qubes_core.api.server import QubesdServer
from qubes_core.app import Qubes
from qubes_core.client import Qubes as ClientQubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.paths import resolve
from tests.functional.api.conftest import build_installation
from tests.requirements import require_root, require_tool
from tests.support import wait_until_async

CLIENTS = 24
ROUNDS = 6


def features_on_disk(path: Path, vm_name: str) -> dict[str, str]:
    """The features of ``vm_name`` as qubes.xml on disk has them now."""
    root = etree.fromstring(path.read_bytes())
    for domain in root.iter("domain"):
        name = domain.find("properties/property[@name='name']")
        if name is not None and name.text == vm_name:
            return {f.get("name"): f.text or "" for f in domain.iter("feature")}
    raise AssertionError(f"{vm_name} not in {path}")


_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS + 2)


def in_thread(func, *args) -> asyncio.Future:
    """Run a blocking client call in its own thread (enough threads for every client)."""
    return asyncio.get_running_loop().run_in_executor(_THREADS, func, *args)


class SaveRecorder:
    """Wraps ``store.write``: counts saves; can hold the next one or make it fail."""

    def __init__(self, store) -> None:
        self.store = store
        self.real_write = store.write
        self.attempts = 0
        self.saves = 0
        self.fail_next: OSError | None = None
        self.gate: threading.Event | None = None  # set by the test to let a save go on
        self.holding = threading.Event()  # set while a save waits at the gate
        store.write = self.write

    def write(self, data: bytes) -> None:  # runs in qubesd's save thread
        self.attempts += 1
        if self.gate is not None:
            self.holding.set()
            assert self.gate.wait(30)
            self.gate = None
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        self.real_write(data)
        self.saves += 1


@pytest.fixture
async def served(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=CLIENTS)
    app = Qubes(base / "qubes.xml")
    server = QubesdServer(app, resolve(base))
    recorder = SaveRecorder(app.store)
    await server.start()
    yield server, recorder, base
    await server.stop()
    app.close()


async def test_concurrent_writes_share_saves_and_each_reply_means_on_disk(served):
    server, recorder, base = served
    xml = base / "qubes.xml"
    not_on_disk: list[str] = []

    def client_run(index: int) -> None:
        vm = ClientQubes(base).domains.get_blind(f"vm{index + 1}")
        for round_ in range(ROUNDS):
            vm.features[f"round-{round_}"] = str(index)
            # Acknowledged: the file on disk holds it now (not only some later file).
            if features_on_disk(xml, vm.name).get(f"round-{round_}") != str(index):
                not_on_disk.append(f"{vm.name} round-{round_}")

    await asyncio.wait_for(asyncio.gather(
        *(in_thread(client_run, i) for i in range(CLIENTS))), 120)
    writes = CLIENTS * ROUNDS
    assert not not_on_disk, not_on_disk[:5]
    assert recorder.saves == server.commits.saves
    # Batched: far fewer saves than writes (each save covers every write before it).
    assert 0 < recorder.saves < writes / 2, (recorder.saves, writes)
    reloaded = Qubes(xml, lock=False)
    try:
        for i in range(CLIENTS):
            features = reloaded.domains[f"vm{i + 1}"].features
            assert all(features[f"round-{r}"] == str(i) for r in range(ROUNDS))
    finally:
        reloaded.close()


async def test_one_save_covers_the_writes_made_while_another_was_on_disk(served):
    server, recorder, base = served
    client = ClientQubes(base)
    recorder.gate = threading.Event()
    first = in_thread(client.call, "admin.vm.feature.Set", "vm1", "first", "1")
    assert await in_thread(recorder.holding.wait, 10)
    later = [in_thread(client.call, "admin.vm.feature.Set", f"vm{i}", "later", str(i))
             for i in range(2, 9)]
    await wait_until_async(lambda: server.commits.waiting == 8)  # applied, waiting for a save
    assert not any(task.done() for task in later)
    recorder.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 30)
    assert recorder.saves == 2  # one for "first", one for the seven later writes
    assert features_on_disk(base / "qubes.xml", "vm8")["later"] == "8"


async def test_reads_do_not_wait_for_a_save_on_disk(served):
    """While a save is held at the disk, reads are answered; the writer is not."""
    server, recorder, base = served
    client = ClientQubes(base)
    recorder.gate = threading.Event()
    write = in_thread(client.call, "admin.vm.property.Set", "vm1", "memory", "900")
    try:
        assert await in_thread(recorder.holding.wait, 10)
        reads = [in_thread(client.call, "admin.vm.property.Get", "vm2", "label"),
                 in_thread(client.call, "admin.vm.List"),
                 in_thread(client.call, "admin.vm.feature.List", "vm3")]
        done, _ = await asyncio.wait(reads, timeout=10)
        assert len(done) == 3 and not write.done()
        assert reads[0].result() == "default=False type=label blue"
    finally:
        recorder.gate.set()
    assert await asyncio.wait_for(write, 10) == ""


async def test_a_failed_save_fails_the_calls_it_covered_only(served):
    server, recorder, base = served
    client = ClientQubes(base)
    recorder.gate = threading.Event()
    recorder.fail_next = OSError(errno.ENOSPC, "No space left on device")
    covered = [in_thread(client.call, "admin.vm.feature.Set", "vm1", "covered", "1")]
    assert await in_thread(recorder.holding.wait, 10)
    later = [in_thread(client.call, "admin.vm.feature.Set", f"vm{i}", "later", "1")
             for i in (2, 3)]
    await wait_until_async(lambda: server.commits.waiting == 3)
    recorder.gate.set()
    results = await asyncio.wait_for(
        asyncio.gather(*covered, *later, return_exceptions=True), 30)
    failed, *succeeded = results
    assert isinstance(failed, exc.QubesStoreError), failed
    assert "could not be saved" in str(failed) and "No space left" in str(failed)
    assert succeeded == ["", ""]
    assert (recorder.attempts, recorder.saves) == (2, 1)
    # The failed call's change stayed in the model and went out with the next save.
    assert features_on_disk(base / "qubes.xml", "vm1") == {"covered": "1"}
    assert features_on_disk(base / "qubes.xml", "vm3") == {"later": "1"}


async def test_save_each_write_mode_saves_once_per_call(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=8)
    app = Qubes(base / "qubes.xml")
    server = QubesdServer(app, resolve(base), group_commit=False)
    recorder = SaveRecorder(app.store)
    await server.start()
    try:
        clients = [ClientQubes(base).domains.get_blind(f"vm{i}") for i in range(1, 9)]

        def write(vm) -> None:
            vm.features["x"] = vm.name

        await asyncio.wait_for(asyncio.gather(
            *(in_thread(write, vm) for vm in clients)), 60)
    finally:
        await server.stop()
        app.close()
    assert recorder.saves == 8


def test_full_disk_fails_the_write_and_keeps_qubesd_serving(tmp_path):
    """qubes.xml on a real, full tmpfs: the write is refused, later ones succeed."""
    require_root()
    require_tool("mount", "umount")
    base = tmp_path / "inst"
    base.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(base)], check=True)
    daemon = None
    try:
        build_installation(base, appvms=2)
        daemon = EmbeddedQubesd.start(base, runtime="offline")
        client = ClientQubes(base)
        filler = base / "filler"
        with open(filler, "wb") as out, pytest.raises(OSError) as full:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(exc.QubesStoreError, match="No space left"):
            client.domains["vm1"].features["lost-for-now"] = "1"
        assert features_on_disk(base / "qubes.xml", "vm1") == {}
        assert client.domains["vm1"].features["lost-for-now"] == "1"  # in qubesd's model
        filler.unlink()
        client.domains["vm2"].features["after"] = "1"
        assert features_on_disk(base / "qubes.xml", "vm1") == {"lost-for-now": "1"}
        assert features_on_disk(base / "qubes.xml", "vm2") == {"after": "1"}
    finally:
        if daemon is not None:
            daemon.stop()
        subprocess.run(["umount", str(base)], check=False)
