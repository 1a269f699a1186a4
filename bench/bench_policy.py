"""qrexec policy: deciding a call against 1000 policy lines; loading and re-validating
the policy directory when a file changes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.common import Report, median_time
from qubes_core.app import Qubes
from qubes_core.policy import DomainInfo, FixedSystem, ModelSystem, Policy, Request
from qubes_core.policy.tokens import match_source, normalise_target
from qubes_core.policy.watch import PolicyWatcher

N_LINES = 1000
N_VMS = 100
CALLS = 2000


def write_policy(directory: Path) -> None:
    """1000 lines over 10 files: 100 services x (tag, type, name, dispvm, deny) rules."""
    lines = []
    for service in range(N_LINES // 10):
        name = f"bench.Service{service:03d}"
        lines += [
            f"{name} +arg vm{service % N_VMS:03d} @tag:group-{service % 10} allow",
            f"{name} * @tag:group-{(service + 1) % 10} @type:AppVM ask default_target=vm000",
            f"{name} * @type:TemplateVM @anyvm deny notify=no",
            f"{name} * @anyvm @dispvm allow",
            f"{name} * @tag:never @anyvm deny",
            f"{name} * vm{(service + 3) % N_VMS:03d} vm001 allow target=vm002 user=root",
            f"{name} * @anyvm @adminvm deny",
            f"{name} +other @anyvm @anyvm deny",
            f"{name} * @tag:group-{(service + 5) % 10} @tag:bench allow",
            f"{name} * @anyvm @anyvm deny",
        ]
    per_file = len(lines) // 10
    for index in range(10):
        chunk = lines[index * per_file:(index + 1) * per_file]
        (directory / f"{50 + index}-bench.policy").write_text("\n".join(chunk) + "\n")


def fixed_system() -> FixedSystem:
    domains = [DomainInfo("dom0", "AdminVM"), DomainInfo("debian-12", "TemplateVM")]
    domains += [DomainInfo(f"vm{i:03d}", "AppVM", frozenset({"bench", f"group-{i % 10}"}),
                           default_dispvm="vm000", template_for_dispvms=(i == 0))
                for i in range(N_VMS)]
    return FixedSystem(domains)


def linear_first_match(policy: Policy, request: Request, system: FixedSystem) -> object:
    """Baseline: the same first-match search over every line, without the service index."""
    source = system.domain(request.source)
    target = normalise_target(request.target)
    for rule in policy.rules:
        if (rule.matches_call(request.service, request.argument)
                and match_source(rule.source, request.source, system)
                and rule.target.match(target, system, source)):
            return rule
    return None


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "policy.d"
        directory.mkdir()
        write_policy(directory)
        system = fixed_system()
        policy = Policy.load(directory)
        assert len(policy.rules) == N_LINES
        # The last service, matched by its 9th line: the worst case for a first-match scan.
        last = f"bench.Service{N_LINES // 10 - 1:03d}"
        request = Request(last, "", "vm004", "vm007")
        decision = policy.evaluate(request, system)
        assert decision.allowed and decision.rule.lineno == 99, decision.reason

        def calls_indexed() -> None:
            for _ in range(CALLS):
                policy.evaluate(request, system)

        def calls_linear() -> None:
            for _ in range(CALLS):
                linear_first_match(policy, request, system)

        indexed = median_time(calls_indexed, repeat=7) / CALLS
        linear = median_time(calls_linear, repeat=7) / CALLS
        report.time(f"decide a call, {N_LINES} lines (indexed by service)", indexed,
                    "median per call")
        report.time(f"baseline: first-match scan of all {N_LINES} lines", linear,
                    "median per call")
        report.ratio("indexed / scan", indexed, linear, "lower is better")

        with Qubes.create_empty_store(Path(tmp) / "qubes.xml", setup_check="auto") as app:
            template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
            app.default_template = template
            for i in range(N_VMS):
                vm = app.add_new_vm("AppVM", name=f"vm{i:03d}", label="blue")
                vm.tags.add("bench")
                vm.tags.add(f"group-{i % 10}")
            model = ModelSystem(app)
            assert policy.evaluate(request, model).allowed

            def calls_model() -> None:
                for _ in range(CALLS):
                    policy.evaluate(request, model)

            on_model = median_time(calls_model, repeat=7) / CALLS
            report.time(f"decide a call against the live model ({N_VMS} VMs)", on_model,
                        "median per call")

        load = median_time(lambda: Policy.load(directory), repeat=7)
        report.time(f"load and validate {N_LINES} lines in 10 files", load, "median")
        watcher = PolicyWatcher(directory)
        watcher.reload()
        idle = median_time(watcher.poll, repeat=21)
        report.time("poll the directory, nothing changed", idle, "median (every 0.5 s)")
        edited = directory / "55-bench.policy"
        counter = [0]

        def touch() -> None:
            counter[0] += 1
            st = edited.stat()
            os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 1000 * counter[0]))

        changed = median_time(lambda: watcher.poll(), repeat=7, setup=touch)
        report.time("poll after a file changed (re-validate all)", changed, "median")
        report.ratio("idle poll / reload", idle, changed, "cost of watching")
