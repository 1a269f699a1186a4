"""Many clients at once, and qubesd killed in the middle of writes."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from lxml import etree

from qubes_core.app import Qubes
from qubes_core.client import Qubes as ClientQubes
from qubes_core.client.embedded import EmbeddedQubesd
from tests.functional.api.conftest import RunningQubesd, build_installation
from tests.support import wait_until

CLIENTS = 32
ROUNDS = 15


@pytest.fixture
def big_qubesd(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=CLIENTS)
    daemon = RunningQubesd(base)
    daemon.start()
    yield daemon
    daemon.stop()


def test_32_clients_lose_no_write(big_qubesd):
    errors: list[BaseException] = []
    acked: dict[str, dict[str, str]] = {}

    def client_run(index: int) -> None:
        try:
            client = ClientQubes(big_qubesd.base_dir)
            own = client.domains.get_blind(f"vm{index + 1}")
            shared = client.domains.get_blind("vm1")
            mine = acked.setdefault(own.name, {})
            for round_ in range(ROUNDS):
                own.features[f"round-{round_}"] = str(index)
                mine[f"round-{round_}"] = str(index)
                shared.features[f"from-{index}"] = str(round_)
                own.memory = 400 + round_
                own.tags.add(f"t{round_}")
                # Reads between the writes.
                assert own.features[f"round-{round_}"] == str(index)
                with client.cache():
                    assert len(list(client.domains)) == CLIENTS + 4
                    assert own.memory == 400 + round_
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors[:3]
    xml = big_qubesd.base_dir / "qubes.xml"
    etree.fromstring(xml.read_bytes())  # valid XML
    reloaded = Qubes(xml, lock=False)
    try:
        for name, features in acked.items():
            vm = reloaded.domains[name]
            for key, value in features.items():
                assert vm.features[key] == value
            assert vm.memory == 400 + ROUNDS - 1
            assert set(vm.tags) == {f"t{r}" for r in range(ROUNDS)} | {
                "guivm-dom0", "audiovm-dom0"}  # and Qubes' automatic tags
        shared = reloaded.domains["vm1"].features
        assert all(shared[f"from-{i}"] == str(ROUNDS - 1) for i in range(CLIENTS))
    finally:
        reloaded.close()


def test_sigkill_keeps_every_acknowledged_write(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=8)
    daemon = EmbeddedQubesd.start(base, runtime="offline")
    acked: list[tuple[str, str, str]] = []
    acked_lock = threading.Lock()
    stop = threading.Event()

    def writer(index: int) -> None:
        client = ClientQubes(base)
        vm = client.domains.get_blind(f"vm{index + 1}")
        seq = 0
        while not stop.is_set():
            key, value = f"seq-{seq}", f"{index}-{seq}"
            try:
                vm.features[key] = value
            except Exception:
                return  # qubesd is gone: this write was not acknowledged
            with acked_lock:
                acked.append((vm.name, key, value))
            seq += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acked) >= 200, what="200 acknowledged writes")
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acked) >= 200
    restarted = EmbeddedQubesd.start(base, runtime="offline")
    try:
        client = ClientQubes(base)
        with client.cache():
            for name, key, value in acked:
                assert client.domains.get_blind(name).features[key] == value
    finally:
        restarted.stop()
    daemon.stop()
