"""Writers during a volume copy: admin.vm.feature.Set while admin.vm.volume.CloneTo runs.

CloneTo copies without the server's write lock, so another writer waits only for
its own save, not for the copy. Measured in-process (the server's whole call path
but the socket) on the default pool under a temporary directory: the copy's
duration, and the median feature.Set latency idle and during the copy (ratio
against idle, same run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Report, fmt_seconds

MiB = 1024**2
DATA = 256 * MiB
BLOCK = 4 * MiB
IDLE_CALLS = 30


async def _call(server: Any, method: str, dest: str = "dom0", arg: str = "",
                payload: bytes = b"") -> bytes:
    from qubes_core import protocol

    reply = await server.handle(protocol.encode_request(method, "dom0", dest, arg, payload))
    if not reply or not reply.startswith(protocol.OK):
        raise RuntimeError(f"{method} {dest} {arg}: {reply!r}")
    return reply[len(protocol.OK):]


def _fill(path: str) -> None:
    block = bytes(range(1, 256)) * (BLOCK // 255) + b"\x01" * (BLOCK % 255)
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, DATA, BLOCK):
            os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


async def _feature_set(server: Any, number: int) -> float:
    start = time.perf_counter()
    await _call(server, "admin.vm.feature.Set", "other", "bench", str(number).encode())
    return time.perf_counter() - start


async def _measure(base: Path) -> dict[str, Any]:
    from qubes_core.api.server import QubesdServer
    from qubes_core.app import Qubes
    from qubes_core.paths import resolve

    app = Qubes.create_empty_store(base / "qubes.xml", setup_check="auto")
    server = QubesdServer(app, resolve(base))
    try:
        for name in ("src", "dst", "other"):
            await _call(server, "admin.vm.Create.StandaloneVM", payload=f"name={name} "
                        "label=red".encode())
        await asyncio.to_thread(_fill, app.domains["src"].volumes["private"].export_path())
        idle = [await _feature_set(server, n) for n in range(IDLE_CALLS)]
        token = await _call(server, "admin.vm.volume.CloneFrom", "src", "private")
        started = time.perf_counter()
        clone = asyncio.create_task(_call(server, "admin.vm.volume.CloneTo", "dst", "private",
                                          token))
        during: list[float] = []
        number = IDLE_CALLS
        while not clone.done():
            sample = await _feature_set(server, number)
            number += 1
            if not clone.done():
                during.append(sample)
        await clone
        copy_seconds = time.perf_counter() - started
        await server.commits.drain()
        return {"idle": idle, "during": during, "copy": copy_seconds}
    finally:
        app.close()


def run(report: Report) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-clone-"))
    try:
        result = asyncio.run(_measure(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    idle = statistics.median(result["idle"])
    report.time(f"CloneTo of {DATA // MiB} MiB of data (sparse copy on this fs)", result["copy"])
    report.time("feature.Set, idle (median)", idle)
    if result["during"]:
        during = statistics.median(result["during"])
        report.time("feature.Set during the copy (median)", during,
                    f"{len(result['during'])} calls completed during the copy")
        report.ratio("feature.Set during the copy / idle", during, idle,
                     f"a writer held up by the copy would wait up to "
                     f"{fmt_seconds(result['copy'])}")
    else:
        report.value("feature.Set during the copy", "none",
                     "no call completed while the copy ran")
