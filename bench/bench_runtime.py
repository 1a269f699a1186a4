"""VM lifecycle on libvirt's test driver: start + shutdown of 100 VMs, median per VM.

The floor is libvirt itself (define + create + destroy of the same domain XML,
called directly); then the runtime alone, the whole lifecycle without volumes,
and the whole lifecycle with file-reflink volumes.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import Report
from qubes_core.app import Qubes
from qubes_core.backend import make_runtime
from qubes_core.backend.domain_xml import render_domain_xml

N_VMS = 100


def clear(conn: Any) -> None:
    for domain in conn.listAllDomains():
        if domain.name() == "test":
            continue
        if domain.isActive():
            domain.destroy()
        domain.undefine()


def make_app(base: Path, runtime: Any, volumes: bool) -> Qubes:
    app = Qubes.create_empty_store(base / "qubes.xml", runtime=runtime, setup_check="auto")
    template = app.add_new_vm("TemplateVM", name="debian-12", label="black", netvm=None)
    app.default_template = template
    for i in range(N_VMS):
        vm = app.add_new_vm("AppVM", name=f"vm{i:03d}", label="blue", netvm=None)
        if not volumes:
            vm.volume_config = {}
    if not volumes:
        template.volume_config = {}
    return app


async def per_vm(vms: list[Any], cycle: Callable[[Any], Awaitable[None]]) -> float:
    """Median seconds of ``cycle(vm)`` over ``vms``, one VM after the other."""
    samples = []
    for vm in vms:
        start = time.perf_counter()
        await cycle(vm)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def floor(app: Qubes, conn: Any) -> float:
    xmls = [render_domain_xml(vm, "test") for vm in app.domains if vm.name.startswith("vm")]
    samples = []
    for xml in xmls:
        start = time.perf_counter()
        domain = conn.defineXML(xml)
        domain.create()
        domain.destroy()
        samples.append(time.perf_counter() - start)
    clear(conn)
    return statistics.median(samples)


async def measure(report: Report) -> None:
    runtime = make_runtime("test")
    conn = runtime.connection()
    clear(conn)
    with tempfile.TemporaryDirectory() as tmp:
        bare = make_app(Path(tmp) / "bare", runtime, volumes=False)
        vms = [vm for vm in bare.domains if vm.name.startswith("vm")]
        base = floor(bare, conn)
        report.time(f"floor: libvirt define+create+destroy ({N_VMS} VMs)", base,
                    "median per VM")

        async def runtime_cycle(vm: Any) -> None:
            await runtime.start(vm)
            await runtime.shutdown(vm)
            await runtime.wait_stopped(vm, 10)

        alone = await per_vm(vms, runtime_cycle)
        report.time("runtime.start + shutdown + wait_stopped", alone, "median per VM")
        report.ratio("  runtime / floor", alone, base)

        async def vm_cycle(vm: Any) -> None:
            await vm.start()
            await vm.shutdown(wait=True)

        whole = await per_vm(vms, vm_cycle)
        report.time("vm.start + vm.shutdown(wait) without volumes", whole, "median per VM")
        report.ratio("  lifecycle / floor", whole, base)

        started = time.perf_counter()
        await asyncio.gather(*(vm.start() for vm in vms))
        await asyncio.gather(*(vm.shutdown(wait=True) for vm in vms))
        report.time(f"all {N_VMS} started then shut down concurrently",
                    time.perf_counter() - started, "total")
        bare.close()
        clear(conn)

        with_volumes = make_app(Path(tmp) / "volumes", runtime, volumes=True)
        for vm in with_volumes.domains:
            if vm.qid != 0:
                await vm.storage.create()
        vms = [vm for vm in with_volumes.domains if vm.name.startswith("vm")]
        disks = await per_vm(vms, vm_cycle)
        report.time("vm.start + vm.shutdown(wait) with file-reflink volumes", disks,
                    "median per VM")
        report.ratio("  with volumes / without", disks, whole)
        with_volumes.close()
    clear(conn)
    runtime.close()


def run(report: Report) -> None:
    asyncio.run(measure(report))
