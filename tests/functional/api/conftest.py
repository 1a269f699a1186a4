"""Fixtures: the API served in-process (no sockets) and a real qubesd process."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_core import protocol
from qubes_core.api.server import QubesdServer
from qubes_core.app import Qubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.client.transport import parse_reply
from qubes_core.paths import resolve


class Harness:
    """Calls ``server.handle`` directly: the whole call path except the socket."""

    def __init__(self, app: Qubes, base_dir: Path):
        self.app = app
        self.server = QubesdServer(app, resolve(base_dir))

    async def raw(self, method: str, dest: str = "dom0", arg: str = "",
                  payload: bytes | str = b"", src: str = "dom0", kind: str = "admin"
                  ) -> bytes | None:
        if isinstance(payload, str):
            payload = payload.encode()
        data = protocol.encode_request(method, src, dest, arg, payload)
        return await self.server.handle(data, kind)

    async def call(self, method: str, dest: str = "dom0", arg: str = "",
                   payload: bytes | str = b"", src: str = "dom0", kind: str = "admin") -> str:
        """The body as text; exception replies raised as the client raises them."""
        reply = await self.raw(method, dest, arg, payload, src, kind)
        return parse_reply(reply or b"").decode()


@pytest.fixture
def api(basic_app: Qubes, tmp_path: Path) -> Harness:
    return Harness(basic_app, tmp_path)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_installation(base_dir: Path, appvms: int = 3) -> None:
    """qubes.xml with a template, sys-net, sys-firewall and AppVMs vm1..vmN."""
    app = Qubes.create_empty_store(base_dir / "qubes.xml", setup_check="auto")
    try:
        template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
        app.default_template = template
        net = app.add_new_vm("AppVM", name="sys-net", label="red", provides_network=True,
                             netvm=None)
        app.default_netvm = app.add_new_vm("AppVM", name="sys-firewall", label="green",
                                           provides_network=True, netvm=net)
        for i in range(1, appvms + 1):
            app.add_new_vm("AppVM", name=f"vm{i}", label="blue")
        app.save()
    finally:
        app.close()


#: A callback that holds qubesd's event loop longer than this fails the test: blocking
#: work (disk, libvirt, parsing a big file) belongs in a worker thread.
SLOW_CALLBACK_MS = 50
# What asyncio's debug mode logs for such a callback.
SLOW_CALLBACK_RE = re.compile(r"asyncio: Executing .* took \d+\.\d+ seconds")


class RunningQubesd:
    """A qubesd process whose loop runs in debug mode (unless ``watch_loop`` is False):
    :meth:`slow_callbacks` lists each callback that held it longer than
    ``SLOW_CALLBACK_MS`` (from its log)."""

    def __init__(self, base_dir: Path, watch_loop: bool = True):
        self.base_dir = base_dir
        self.watch_loop = watch_loop
        self.paths = resolve(base_dir)
        self.process: EmbeddedQubesd | None = None
        self.log_path = self.paths.log_dir / "qubesd-embedded.log"
        self._log_offset = 0

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        options = ("--slow-callback-ms", str(SLOW_CALLBACK_MS)) if self.watch_loop else ()
        self.process = EmbeddedQubesd.start(self.base_dir, runtime="offline", options=options)
        assert self.process is not None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def slow_callbacks(self) -> list[str]:
        """The slow callbacks qubesd logged since its last start."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode(errors="replace")
        return [line for line in text.splitlines() if SLOW_CALLBACK_RE.search(line)]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.process.poll() is None


def serve_installation(tmp_path: Path, watch_loop: bool = True) -> Iterator[RunningQubesd]:
    """A qubesd process (offline runtime) serving a small installation in tmp_path; with
    ``watch_loop``, a callback that held its loop too long fails the test."""
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base)
    daemon = RunningQubesd(base, watch_loop)
    daemon.start()
    yield daemon
    daemon.stop()
    slow = daemon.slow_callbacks()
    if slow:
        pytest.fail(f"{len(slow)} callback(s) held qubesd's event loop longer than "
                    f"{SLOW_CALLBACK_MS} ms:\n" + "\n".join(slow), pytrace=False)


@pytest.fixture
def qubesd(tmp_path: Path) -> Iterator[RunningQubesd]:
    """A qubesd process serving a small installation, its loop watched (debug mode)."""
    yield from serve_installation(tmp_path)


@pytest.fixture
def qubesd_env(qubesd: RunningQubesd, monkeypatch: pytest.MonkeyPatch) -> RunningQubesd:
    monkeypatch.setenv("QUBES_BASE_DIR", str(qubesd.base_dir))
    return qubesd


def in_base_env(base: Path) -> dict[str, str]:
    return {**os.environ, "QUBES_BASE_DIR": str(base)}
