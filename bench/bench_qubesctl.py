"""qubesctl on the sandbox runtime: what a management DispVM costs per target.

Per target, from creating its DispVM to the cleanup (policy lines, DispVM
removal, target shutdown): once with the bundle copied in but no Salt run
(the overhead), once with salt-ssh applying a one-file state. Then one target
against four at ``--max-concurrency 4`` (whole ``qubesctl`` runs), and the
whole ``--all`` highstate of the shipped formulas (dom0's VMs, then
``qvm.template-config`` in both templates). The management template holds a
pre-built thin (:func:`~qubes_core.qubesctl.dispvm.prebuild_thin`). Qubes' own qubesctl takes
tens of seconds per target. Beside each figure: the CPU time it took (qubesctl,
qubesd and every VM's processes, from a cgroup), per target, and the load
average: on 2 cores four targets at once cannot take less than twice one
target's CPU time; the ratio's floor is printed from the seconds the whole
machine was busy during the four targets (the kernel's threads included). The
installation lives on a loop-mounted XFS with reflink, as the sandbox
benchmark's does: file-reflink volumes are then snapshots, as on Qubes' pools
(on a file system without reflink each VM start would copy its template's root
image, hundreds of MB). Needs root, bubblewrap, debootstrap, mkfs.xfs and loop
devices; the templates come from the cache of ``qubes-template-build``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench_storage import loop_mount
from bench.common import CpuMeter, Report, load_average, machine_busy_seconds
from qubes_core.demo import sandbox_missing

REPEAT = 3
TARGETS = ("t1", "t2", "t3", "t4")
MARK = "/tmp/qubesctl-mark:\n  file.managed:\n    - contents: {{ grains['id'] }}\n"


def installation(base: Path) -> Any:
    """A sandbox qubesd with a plain template, a Salt template and default-mgmt-dvm."""
    from qubes_core import template_build
    from qubes_core.client.app import Qubes
    from qubes_core.client.embedded import EmbeddedQubesd

    daemon = EmbeddedQubesd.start(base, runtime="sandbox", create=True)
    quiet = template_build.Progress(quiet=True)
    template_build.build("tpl", "bookworm", base_dir=str(base), progress=quiet)
    template_build.build("mgmt-tpl", "bookworm", base_dir=str(base), with_salt=True,
                         progress=quiet)
    from qubes_core.paths import resolve
    from qubes_core.qubesctl.dispvm import prebuild_thin

    prebuild_thin(resolve(base), "mgmt-tpl")
    with Qubes(base) as app:
        app.default_template = "mgmt-tpl"
        dvm = app.add_new_vm("AppVM", "default-mgmt-dvm", "black", template="mgmt-tpl")
        dvm.template_for_dispvms = True
        dvm.netvm = None
        app.management_dispvm = "default-mgmt-dvm"
        for name in TARGETS:
            app.add_new_vm("AppVM", name, "blue", template="tpl").netvm = None
    states = base / "srv/user_salt"
    states.mkdir(parents=True, exist_ok=True)
    (states / "mark.sls").write_text(MARK)
    pillar = base / "srv/user_pillar"  # what the shipped template formula installs: no network
    pillar.mkdir(parents=True, exist_ok=True)
    (pillar / "top.sls").write_text("user:\n  '*':\n    - bench\n")
    (pillar / "bench.sls").write_text("qvm:\n  template-config:\n    packages: [python3]\n")
    return daemon


def qubesctl(base: Path, *argv: str) -> None:
    done = subprocess.run([sys.executable, "-m", "qubes_core.qubesctl.cli", "--base-dir",
                           str(base), *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"qubesctl {' '.join(argv)} failed: {done.stdout}{done.stderr}")


def timed(meter: CpuMeter, func: Callable[[], object], repeat: int = REPEAT
          ) -> tuple[float, str, float]:
    """Median wall seconds of ``func()``, a note (its median CPU time, the load), and the
    median seconds the machine was busy meanwhile (all cores, the kernel's threads too)."""
    walls, cpus, busy = [], [], []
    for _ in range(repeat):
        cpu = meter.seconds()
        machine = machine_busy_seconds()
        start = time.perf_counter()
        func()
        walls.append(time.perf_counter() - start)
        busy.append(machine_busy_seconds() - machine)
        after = meter.seconds()
        if cpu is not None and after is not None:
            cpus.append(after - cpu)
    note = f"CPU {statistics.median(cpus):.2f} s, " if cpus else ""
    return statistics.median(walls), note + load_average(), statistics.median(busy)


def per_target(base: Path, salt: bool, meter: CpuMeter) -> tuple[float, str]:
    """Median seconds of one target's configure (DispVM create → cleanup), and the note."""
    from qubes_core.client.app import Qubes
    from qubes_core.paths import resolve
    from qubes_core.qubesctl import dispvm, render, saltconf
    from qubes_core.qubesctl.targets import Target

    paths = resolve(base)
    opts = saltconf.minion_opts(saltconf.config_dir(paths))
    target = Target("t1", "AppVM")
    render.prepare(opts, [target], need_states=False)
    command = ["state.apply", "mark", "saltenv=user"] if salt else ["test.ping"]
    log = Path(tempfile.mkdtemp()) / "bench.log"
    with Qubes(base) as app:
        session = dispvm.Session(paths, app, opts, command, [])
        if not salt:
            session.inner_command = "true"  # the bundle is copied, Salt is not run

        def configure() -> None:
            outcome, _ = session.configure(target, log)
            if salt and not outcome.ok:
                raise RuntimeError(f"configure failed: {outcome.problems} (log {log})")

        try:
            wall, note, _busy = timed(meter, configure)
            return wall, note
        finally:
            session.close()


def run(report: Report) -> None:
    reason = sandbox_missing()
    if reason:
        report.value("qubesctl on the sandbox runtime", "skipped", f"the sandbox runtime {reason}")
        return
    if shutil.which("mkfs.xfs") is None:
        report.value("qubesctl on the sandbox runtime", "skipped", "needs mkfs.xfs")
        return
    meter = CpuMeter("qubesctl")  # before qubesd starts: it and its VMs are counted
    with tempfile.TemporaryDirectory(prefix="bench-qubesctl-") as tmp, \
            loop_mount("xfs", Path(tmp)) as mnt:
        base = mnt / "base"
        daemon = installation(base)
        try:
            bare, note = per_target(base, False, meter)
            report.time("per target: DispVM create → cleanup, no Salt", bare, note)
            full, note = per_target(base, True, meter)
            report.time("per target: DispVM create → cleanup, salt-ssh (goal ≤ 5 s)", full,
                        note)
            report.time("  of which salt-ssh over qrexec", full - bare)
            apply = ("--skip-dom0", "state.apply", "mark", "saltenv=user")
            one, note, _busy = timed(meter, lambda: qubesctl(base, "--targets=t1", *apply))
            report.time("qubesctl, 1 target", one, note)
            four, note, busy = timed(meter, lambda: qubesctl(
                base, f"--targets={','.join(TARGETS)}", "--max-concurrency", "4", *apply))
            report.time("qubesctl, 4 targets at --max-concurrency 4", four, note)
            report.ratio("4 targets / 1 target", four, one, "goal ≤ 1.5x")
            # the four targets' busy time spread over the cores, were they free of other load
            report.ratio("  floor of that ratio from the machine's busy time (free cores)",
                         busy / min(4, os.cpu_count() or 1), one)
            qubesctl(base, "--dom0-only", "top.enable", "qvm.sys-net", "qvm.sys-firewall",
                     "qvm.default-mgmt-dvm", "qvm.personal", "qvm.work", "qvm.template-config")
            start = time.perf_counter()
            qubesctl(base, "--all", "state.highstate")
            report.time("qubesctl --all state.highstate (shipped formulas)",
                        time.perf_counter() - start,
                        f"once: dom0, then 2 templates, {load_average()}")
        finally:
            if daemon is not None:
                from qubes_core.client.app import Qubes

                with Qubes(base) as app:
                    for vm in app.domains:
                        if vm.klass != "AdminVM" and not vm.is_halted():
                            vm.kill()
                daemon.stop()
            meter.close()
