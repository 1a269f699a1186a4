"""Salt: what a ``salt-call`` of the ``qvm`` modules costs, and a 50-VM highstate.

Every command runs as users run it, ``salt-call --local`` in a new process,
against a qubesd serving the installation (libvirt test driver). Baselines in
the same run: ``salt-call --local test.ping`` for ``qvm.prefs VM`` (goal
<= 1.3x), and ``state.sls`` of a one-state trivial sls for the highstate of a
50-VM declaration, first run (creates the VMs) and converged second run
(goal <= 2x). The installation is the one the Salt tests use. Admin API
calls per run are counted in the salt-call process
itself: this module, run as ``python -m bench.bench_salt --count FILE --
ARGS``, wraps the client transport and then runs salt-call.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Report, median_time
from tests.functional.salt.conftest import build_base

VMS = 50


def declaration(count: int) -> str:
    lines = []
    for i in range(count):
        lines += [f"bench-{i:02d}:", "  qvm.vm:", "    - present:", "      - label: blue",
                  "      - template: debian-12", "    - prefs:", f"      - memory: {400 + i}",
                  "      - netvm: ''", "    - tags:", "      - add: [bench]",
                  "    - actions: [present, prefs, tags]", ""]
    return "\n".join(lines)


def salt_call(root: Path, count_file: Path, *args: str) -> int:
    """Run salt-call; the number of Admin API calls it made."""
    command = [sys.executable, "-m", "bench.bench_salt", "--count", str(count_file), "--",
               "--local", "-c", str(root), "--out=quiet", "--log-level=quiet", *args]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parent.parent,
                   stdout=subprocess.DEVNULL)
    return int(count_file.read_text())


def run(report: Report) -> None:
    from qubes_core.client.embedded import EmbeddedQubesd
    from qubes_core.mgmt import layout, tops

    with tempfile.TemporaryDirectory(prefix="bench-salt-") as tmp:
        base = Path(tmp) / "base"
        build_base(base)
        tree = layout.lay_out(base)
        (tree.salt / "bench").mkdir()
        (tree.salt / "bench" / "vms50.sls").write_text(declaration(VMS))
        (tree.salt / "bench" / "vms50.top").write_text("base:\n  dom0:\n    - bench.vms50\n")
        (tree.salt / "bench" / "trivial.sls").write_text(
            "trivial:\n  test.succeed_without_changes: []\n")
        tops.enable(tree, ["bench.vms50"])
        root = Path(tmp) / "salt"
        layout.write_minion_config(root / "minion", layout.minion_config(base, root_dir=root))
        counts = Path(tmp) / "calls"
        daemon = EmbeddedQubesd.start(base, runtime="test")
        try:
            ping = median_time(lambda: salt_call(root, counts, "test.ping"))
            prefs = median_time(lambda: salt_call(root, counts, "qvm.prefs", "debian-12"))
            prefs_calls = int(counts.read_text())
            report.time("salt-call --local test.ping", ping)
            report.time("salt-call --local qvm.prefs debian-12", prefs,
                        f"{prefs_calls} Admin API calls")
            report.ratio("qvm.prefs / test.ping", prefs, ping, "goal <= 1.3x")

            trivial = median_time(lambda: salt_call(root, counts, "state.sls", "bench.trivial"),
                                  repeat=3)
            report.time("state.sls of a one-state trivial sls", trivial)
            first = median_time(lambda: salt_call(root, counts, "state.highstate"), repeat=1)
            first_calls = int(counts.read_text())
            report.time(f"highstate, {VMS} VMs declared, first run", first,
                        f"{first_calls} Admin API calls")
            second = median_time(lambda: salt_call(root, counts, "state.highstate"), repeat=3)
            second_calls = int(counts.read_text())
            report.time(f"highstate, {VMS} VMs declared, converged run", second,
                        f"{second_calls} Admin API calls")
            report.ratio("converged highstate / trivial sls", second, trivial, "goal <= 2x")
            report.ratio("first highstate / trivial sls", first, trivial)
        finally:
            if daemon is not None:
                daemon.stop()


def _counting_salt_call(count_file: str, argv: list[str]) -> None:
    """salt-call with every Admin API call counted into ``count_file`` at exit."""
    import atexit

    from qubes_core.client import transport

    calls = [0]
    original = transport.Transport.call_text

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    transport.Transport.call_text = counted  # type: ignore[method-assign]
    atexit.register(lambda: Path(count_file).write_text(str(calls[0])))
    import salt.scripts

    sys.argv = ["salt-call", *argv]
    salt.scripts.salt_call()


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--count" and sys.argv[3] == "--":
        _counting_salt_call(sys.argv[2], sys.argv[4:])
    else:
        run(Report())
