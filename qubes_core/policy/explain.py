"""``qrexec-policy-explain``: which rule decides a call, and what it resolves to.

For admins: give the source, the requested target and ``SERVICE[+ARG]``; the
answer names the file and line of the deciding rule (and, with ``--trace``,
why each earlier rule for that service did not match). The qubes are read
from the installation's qubes.xml without locking it, so qubesd may run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qubes_core.policy.evaluate import FixedSystem, ModelSystem, Policy, Request
from qubes_core.policy.rules import PolicySyntaxError, Rule
from qubes_core.policy.tokens import (
    ADMINVM,
    SystemInfo,
    match_source,
    normalise_source,
    normalise_target,
)


def why_not(rule: Rule, request: Request, system: SystemInfo) -> str:
    """Which column of ``rule`` does not cover ``request`` ("" if it matches)."""
    if not rule.matches_call(request.service, request.argument):
        return "argument differs"
    source_name = normalise_source(request.source)
    if not match_source(rule.source, source_name, system):
        return f"source {request.source} is not {rule.source}"
    source = system.domain("dom0" if source_name == ADMINVM else source_name)
    if not rule.target.match(normalise_target(request.target), system, source):
        return f"target {request.target or '@default'} is not {rule.target}"
    return ""


def explain(policy: Policy, request: Request, system: SystemInfo, trace: bool = False
            ) -> list[str]:
    """The lines the command prints."""
    decision = policy.evaluate(request, system)
    lines = [f"call: {request.service}+{request.argument} from {request.source} "
             f"to {request.target or '@default'}"]
    if trace:
        for rule in policy.rules_for(request.service):
            reason = why_not(rule, request, system)
            if not reason:
                break
            lines.append(f"  skipped {rule.where()}: {rule.text}  ({reason})")
    lines.append(f"decision: {decision.action}: {decision.reason}")
    if decision.rule is not None:
        lines.append(f"rule: {decision.rule.where()}: {decision.rule.text}")
    if decision.action == "allow":
        lines.append(f"target: {decision.target}")
        lines.append(f"user: {decision.user or '(default)'}")
    elif decision.action == "ask":
        lines.append(f"choices: {' '.join(decision.targets_for_ask)}")
        lines.append(f"default target: {decision.default_target or '(none)'}")
    return lines


def _system(paths: Any) -> SystemInfo:
    from qubes_core.app import Qubes

    if not paths.qubes_xml.exists():
        return FixedSystem([])
    app = Qubes(paths.qubes_xml, lock=False)
    return ModelSystem(app)


def main(argv: list[str] | None = None) -> int:
    """``qrexec-policy-explain``: print the decision on a call and the rule behind it.

    Exits 0 when the call is allowed, 1 when denied, 2 when the policy does not load.
    """
    from qubes_core.paths import resolve

    parser = argparse.ArgumentParser(
        prog="qrexec-policy-explain",
        description="Explain the qrexec policy's decision on a call.")
    parser.add_argument("--base-dir", help="installation (default: $QUBES_BASE_DIR, "
                        "else the production paths)")
    parser.add_argument("--policy-dir", type=Path, help="policy directory to read instead")
    parser.add_argument("--trace", action="store_true",
                        help="also show the earlier rules for the service and why they "
                        "did not match")
    parser.add_argument("source", help="the calling qube")
    parser.add_argument("target", help="the requested target (a name, dom0, @default, "
                        "@dispvm, @dispvm:VM)")
    parser.add_argument("service", help="SERVICE or SERVICE+ARGUMENT")
    args = parser.parse_args(argv)
    paths = resolve(args.base_dir)
    policy_dir = args.policy_dir or paths.policy_dir
    try:
        policy = Policy.load(policy_dir, paths.rpc_dir / "policy")
    except PolicySyntaxError as err:
        print(f"decision: deny: the policy does not load: {err}")
        return 2
    request = Request.parse(args.service, args.source, args.target)
    system = _system(paths)
    for line in explain(policy, request, system, trace=args.trace):
        print(line)
    return 0 if policy.evaluate(request, system).allowed else 1


if __name__ == "__main__":
    sys.exit(main())
