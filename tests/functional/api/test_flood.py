"""A crowd of clients cannot lock the admin out.

A real qubesd process, started with the common limit of 1024 file descriptors,
gets 1100 idle connections on its VM-facing (misc) socket: it still answers on
the admin socket, its policy reloader still applies an edit, and its log stays
small. In-process, on real sockets: a request that never completes is dropped
after its socket's timeout, and each socket serves at most its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qubes_core.api.server import SOCKET_LIMITS, QubesdServer, RateLimitedLog
from qubes_core.app import Qubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.client.transport import QubesDaemonNoResponseError, Transport
from qubes_core.paths import resolve
from tests.functional.api.conftest import build_installation
from tests.requirements import require_root
from tests.support import wait_until, wait_until_async

IDLE_CLIENTS = 1100
DESCRIPTORS = 1024


@contextlib.contextmanager
def _descriptor_limit(limit: int) -> Iterator[None]:
    """Lower this process's soft limit (a child started meanwhile inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=1)
    with _descriptor_limit(DESCRIPTORS):
        process = EmbeddedQubesd.start(base, runtime="offline")
    assert process is not None
    yield resolve(base), process.process.pid
    process.stop()


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _open_idle_clients(path: Path, count: int, pid: int) -> tuple[list[socket.socket], int]:
    """``count`` connections that send nothing, and the most descriptors qubesd had open
    meanwhile (sampled every 50 connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + 1024
    if hard != resource.RLIM_INFINITY and hard < needed:
        require_root()  # only root may raise the hard limit
        hard = needed
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    clients: list[socket.socket] = []
    deadline = time.monotonic() + 60
    peak = 0
    while len(clients) < count:
        if len(clients) % 50 == 0:
            peak = max(peak, _open_descriptors(pid))
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            client.connect(str(path))
        except BlockingIOError:  # the listen backlog is full: the server has to accept
            client.close()
            assert time.monotonic() < deadline, f"only {len(clients)} clients connected"
            time.sleep(0.01)
            continue
        clients.append(client)
    return clients, max(peak, _open_descriptors(pid))


def test_idle_crowd_on_the_vm_socket_leaves_admin_and_policy_working(daemon: Any) -> None:
    paths, pid = daemon
    admin = Transport(paths.admin_socket)
    clients, peak = _open_idle_clients(paths.misc_socket, IDLE_CLIENTS, pid)
    try:
        # The crowd never takes more than its socket's share of qubesd's descriptors.
        assert peak < DESCRIPTORS // 2, f"qubesd had {peak} descriptors open"
        # Every admin call is answered while the crowd holds on.
        for _ in range(20):
            assert "vm1 class=AppVM" in admin.call_text("admin.vm.List")
        # The policy reloader still reads its files: a new grant is applied.
        vm_admin = Transport(paths.admin_socket, src="vm1")

        def label_readable() -> bool:
            try:
                return vm_admin.call_text("admin.vm.property.Get", "vm1", "label") != ""
            except QubesDaemonNoResponseError:
                return False

        assert not label_readable()
        include = paths.policy_dir / "include" / "admin-local-ro"
        include.write_text(include.read_text() + "vm1 vm1 allow target=dom0\n")
        wait_until(label_readable, what="the policy edit applied under the flood")
        assert "vm1 class=AppVM" in admin.call_text("admin.vm.List")
    finally:
        for client in clients:
            client.close()
    log = (paths.log_dir / "qubesd-embedded.log").read_text(errors="replace")
    limit_lines = [line for line in log.splitlines() if "its limit" in line]
    assert 1 <= len(limit_lines) <= 20, limit_lines[:3]
    assert "Traceback" not in log and "Too many open files" not in log


@pytest.fixture
async def served(basic_app: Qubes, tmp_path: Path) -> Any:
    server = QubesdServer(basic_app, resolve(tmp_path))
    yield server
    await server.stop()


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


async def test_a_request_that_never_completes_is_dropped(served: Any, monkeypatch: Any
                                                         ) -> None:
    served.limits["misc"] = SOCKET_LIMITS["misc"].__class__(
        share=16, floor=4, cap=128, request_timeout=0.2)
    await served.start()
    reader, writer = await _connect(served.paths.misc_socket)
    writer.write(b"qubes.GetDate+ work ")  # and never the rest
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    assert served.open_connections["misc"] == 0


async def test_each_socket_serves_at_most_its_share(served: Any) -> None:
    await served.start()
    limit = served.max_connections["misc"]
    assert limit < served.max_connections["internal"] < served.max_connections["admin"]
    idle = [await _connect(served.paths.misc_socket) for _ in range(limit)]
    await wait_until_async(lambda: served.open_connections["misc"] == limit,
                           what="the idle connections held")
    reader, writer = await _connect(served.paths.misc_socket)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed at once, unanswered
    writer.close()
    # The admin socket is not affected.
    reader, writer = await _connect(served.paths.admin_socket)
    writer.write(b"admin.vm.List dom0 keyword adminvm\x00")
    writer.write_eof()
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"0\x00")
    writer.close()
    for _, idle_writer in idle:
        idle_writer.close()


def test_rate_limited_log_says_how_many_it_left_out(caplog: Any) -> None:
    now = [0.0]
    limited = RateLimitedLog(__import__("logging").getLogger("test.flood"), burst=3,
                             interval=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="test.flood"):
        for number in range(100):
            limited.warning("k", "broken request %d", number)
        now[0] = 11.0
        limited.warning("k", "broken request %d", 100)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[:3] == ["broken request 0", "broken request 1", "broken request 2"]
    assert messages[3].startswith("97 more warnings like this were not logged in 10 s")
    assert messages[4] == "broken request 100"
    assert len(messages) == 5
