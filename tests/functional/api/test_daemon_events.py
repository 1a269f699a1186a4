"""qubesd's lifecycle events on the app: qubesd-start (with the server), qubesd-stop."""

from __future__ import annotations

import asyncio
import os
import signal

from qubes_core.api.server import QubesdServer
from qubes_core.app import Qubes
from qubes_core.qubesd import parse_args, serve
from tests.functional.api.conftest import build_installation


async def test_start_and_stop_events(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=1)
    seen = []

    def on_start(app, event, server):
        seen.append((event, server))
        # The sockets are up when qubesd-start fires.
        assert server.paths.admin_socket.exists()
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

    def on_stop(app, event):
        seen.append((event, None))

    Qubes.add_class_handler("qubesd-start", on_start)
    Qubes.add_class_handler("qubesd-stop", on_stop)
    loop = asyncio.get_running_loop()
    try:
        code = await asyncio.wait_for(
            serve(parse_args(["--base-dir", str(base), "--runtime", "offline"])), 30)
    finally:
        Qubes.remove_class_handler("qubesd-start", on_start)
        Qubes.remove_class_handler("qubesd-stop", on_stop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    assert code == 0
    assert [event for event, _ in seen] == ["qubesd-start", "qubesd-stop"]
    assert isinstance(seen[0][1], QubesdServer)
    assert not (base / "run" / "qubesd.sock").exists()
