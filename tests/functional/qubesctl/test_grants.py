"""The temporary policy lines: in force while the run lives, gone after it in every case."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from qubes_core.policy.evaluate import FixedSystem, Policy, Request
from qubes_core.policy.tokens import DomainInfo
from qubes_core.qubesctl.grants import POLICY_FILE, PolicyGrants

SYSTEM = FixedSystem([DomainInfo("dom0", "AdminVM"), DomainInfo("work", "AppVM"),
                      DomainInfo("disp-mgmt-work", "DispVM"), DomainInfo("other", "AppVM")])


def decide(policy_dir: Path, service: str, source: str, target: str) -> tuple[str, str | None]:
    decision = Policy.load(policy_dir).evaluate(Request.parse(service, source, target), SYSTEM)
    return decision.action, decision.user


def test_a_grant_lets_the_dispvm_reach_its_target_only_until_revoked(tmp_path):
    grants = PolicyGrants(tmp_path / "policy.d", tmp_path / "run")
    block = grants.grant("disp-mgmt-work", "work")
    for service in ("qubes.VMRootShell", "qubes.VMShell", "qubes.Filecopy"):
        assert decide(tmp_path / "policy.d", service, "disp-mgmt-work", "work") == \
            ("allow", "root")
    assert decide(tmp_path / "policy.d", "qubes.VMRootShell", "disp-mgmt-work",
                  "other")[0] == "deny"
    assert decide(tmp_path / "policy.d", "qubes.VMRootShell", "other", "work")[0] == "deny"
    grants.revoke(block)
    assert not (tmp_path / "policy.d" / POLICY_FILE).exists()
    assert decide(tmp_path / "policy.d", "qubes.VMRootShell", "disp-mgmt-work",
                  "work")[0] == "deny"


GRANTER = """
import os, signal, sys
from pathlib import Path
from qubes_core.qubesctl.grants import PolicyGrants
grants = PolicyGrants(Path(sys.argv[1]), Path(sys.argv[2]))
for i in range(int(sys.argv[3])):
    grants.grant(f"disp-mgmt-vm{os.getpid()}-{i}", "work")
if sys.argv[4] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run_granter(tmp_path: Path, count: int, end: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", GRANTER, str(tmp_path / "policy.d"),
                             str(tmp_path / "run"), str(count), end])


def test_lines_of_a_killed_run_are_removed_by_the_next_run_and_only_those(tmp_path):
    killed = run_granter(tmp_path, 2, "kill")
    assert killed.wait() == -signal.SIGKILL
    assert len(PolicyGrants(tmp_path / "policy.d", tmp_path / "run").read()) == 2

    mine = PolicyGrants(tmp_path / "policy.d", tmp_path / "run")
    own = mine.grant("disp-mgmt-work", "work")
    swept = mine.sweep()
    assert sorted(b.dispvm for b in swept) == [f"disp-mgmt-vm{killed.pid}-{i}" for i in (0, 1)]
    assert mine.read() == [own]  # a living run's lines stay
    assert decide(tmp_path / "policy.d", "qubes.VMRootShell", "disp-mgmt-work",
                  "work") == ("allow", "root")


def test_a_reused_pid_does_not_keep_dead_lines(tmp_path):
    grants = PolicyGrants(tmp_path / "policy.d", tmp_path / "run")
    grants.grant("disp-mgmt-work", "work")
    path = tmp_path / "policy.d" / POLICY_FILE
    # the same pid with another start time: a process that reused a dead run's pid
    path.write_text(path.read_text().replace(f"start={grants.start}", "start=1"))
    assert [b.dispvm for b in PolicyGrants(tmp_path / "policy.d", tmp_path / "run").sweep()] \
        == ["disp-mgmt-work"]
    assert not path.exists()


def test_concurrent_runs_lose_no_line(tmp_path):
    runs = [run_granter(tmp_path, 25, "stay") for _ in range(4)]
    assert [run.wait() for run in runs] == [0, 0, 0, 0]
    text = (tmp_path / "policy.d" / POLICY_FILE).read_text()
    for run in runs:
        for i in range(25):
            assert f"disp-mgmt-vm{run.pid}-{i} work allow" in text
    # and all of them are dead now: the next run removes everything
    assert len(PolicyGrants(tmp_path / "policy.d", tmp_path / "run").sweep()) == 100
    assert not (tmp_path / "policy.d" / POLICY_FILE).exists()
    assert os.listdir(tmp_path / "policy.d") == []


def test_threads_of_one_run_lose_no_line(tmp_path):
    import threading

    grants = PolicyGrants(tmp_path / "policy.d", tmp_path / "run")

    def grant_many(worker: int) -> None:
        for i in range(20):
            grants.grant(f"disp-mgmt-w{worker}-{i}", "work")

    threads = [threading.Thread(target=grant_many, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(grants.read()) == 80
