"""The model: qubes.xml load and save with 1000 VMs, creation of 1000 VMs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lxml import etree

from bench.common import Report, median_time
from qubes_core.app import Qubes
from qubes_core.store import serialize

N_VMS = 1000


def populate(app: Qubes, count: int) -> None:
    """``count`` AppVMs, each with features, tags and its volume config."""
    template = app.domains.get("debian-12") or app.add_new_vm(
        "TemplateVM", name="debian-12", label="black")
    app.default_template = template
    for i in range(count):
        vm = app.add_new_vm("AppVM", name=f"vm{i:04d}", label="blue")
        vm.features["service.cups"] = True
        vm.features["os-version"] = "12"
        vm.features["note"] = f"number {i}"
        vm.tags.add("bench")
        vm.tags.add(f"group-{i % 10}")


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qubes.xml"
        app = Qubes.create_empty_store(path, setup_check="auto")
        populate(app, N_VMS)
        app.save()
        size = path.stat().st_size
        report.value(f"qubes.xml with {N_VMS} VMs", f"{size / 1024:.0f} KiB")

        def full_save() -> None:
            app.store.write(serialize(app, use_cache=False))

        full = median_time(full_save, repeat=7)
        report.time(f"save, every VM serialized ({N_VMS} VMs)", full)
        counter = iter(range(10**6))
        work = app.domains["vm0500"]

        def save_after_one_change() -> None:
            work.features["note"] = f"changed {next(counter)}"
            app.save()

        one = median_time(save_after_one_change, repeat=7)
        report.time(f"save after one VM changed ({N_VMS} VMs)", one)
        report.ratio("  one-change save / full save", one, full)
        app.close()

        def load() -> None:
            Qubes(path, lock=False)

        load_time = median_time(load, repeat=7)
        report.time(f"load ({N_VMS} VMs)", load_time)
        parse_time = median_time(lambda: etree.parse(str(path)), repeat=7)
        report.time("  floor: lxml parse of the same file", parse_time)
        report.ratio("  load / parse", load_time, parse_time)

        def create() -> None:
            with tempfile.TemporaryDirectory() as inner:
                fresh = Qubes.create_empty_store(Path(inner) / "qubes.xml", setup_check="auto")
                populate(fresh, N_VMS)
                fresh.close()

        report.time(f"create {N_VMS} VMs with add_new_vm (+features, tags)",
                    median_time(create, repeat=5))
