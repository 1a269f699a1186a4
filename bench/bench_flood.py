"""Admin calls while a crowd holds the VM-facing socket, against the same calls without it.

A real qubesd (offline runtime, 100 VMs) started with the common limit of 1024
file descriptors; property.Get medians with no other client, then with 1100
idle connections open on the misc socket (those over its share are closed at
once, the rest wait for their request timeout), in the same run. The ratio is
what the crowd costs the admin.
"""

from __future__ import annotations

import resource
import shutil
import socket
import tempfile
import time
from pathlib import Path

from bench.bench_api import build
from bench.common import Report, median_time
from qubes_core.client import Qubes as ClientQubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.paths import resolve

DESCRIPTORS = 1024
CROWD = 1100


def _crowd(path: Path) -> list[socket.socket]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < CROWD + 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (CROWD + 1024, max(hard, CROWD + 1024)))
    clients: list[socket.socket] = []
    while len(clients) < CROWD:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            client.connect(str(path))
        except BlockingIOError:
            client.close()
            time.sleep(0.001)
            continue
        clients.append(client)
    return clients


def run(report: Report) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        build(tmp, 100)
        resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, hard))
        try:
            daemon = EmbeddedQubesd.start(tmp, runtime="offline")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            client = ClientQubes(tmp)

            def get() -> None:
                client.call("admin.vm.property.Get", "vm0", "label")

            median_time(get, repeat=100)  # warm up
            quiet = median_time(get, repeat=300)
            report.time("property.Get, no other client", quiet)
            clients = _crowd(resolve(tmp).misc_socket)
            try:
                median_time(get, repeat=100)  # the same warm-up
                crowded = median_time(get, repeat=300)
            finally:
                for each in clients:
                    each.close()
            report.time(f"property.Get, {CROWD} idle clients on the misc socket", crowded)
            report.ratio("crowded / quiet", crowded, quiet)
        finally:
            if daemon is not None:
                daemon.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
