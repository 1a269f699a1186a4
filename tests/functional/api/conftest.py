"""Fixtures: the API served in-process (no sockets) and a real qubesd process."""

from __future__ import annotations

import hashlib
import os
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


class RunningQubesd:
    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.paths = resolve(base_dir)
        self.process: EmbeddedQubesd | None = None

    def start(self) -> None:
        self.process = EmbeddedQubesd.start(self.base_dir, runtime="offline")
        assert self.process is not None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.process.poll() is None


@pytest.fixture
def qubesd(tmp_path: Path) -> Iterator[RunningQubesd]:
    """A qubesd process (offline runtime) serving a small installation in tmp_path."""
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base)
    daemon = RunningQubesd(base)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def qubesd_env(qubesd: RunningQubesd, monkeypatch: pytest.MonkeyPatch) -> RunningQubesd:
    monkeypatch.setenv("QUBES_BASE_DIR", str(qubesd.base_dir))
    return qubesd


def in_base_env(base: Path) -> dict[str, str]:
    return {**os.environ, "QUBES_BASE_DIR": str(base)}
