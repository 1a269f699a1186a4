"""``qvm.policy_explain``: the qrexec policy's decision on a call, as data.

Reads the installation's policy files and its qubes.xml (without locking it,
so qubesd may run), like ``qrexec-policy-explain``, and returns the decision
with the lines that command prints.
"""

from __future__ import annotations

from typing import Any

from qubes_core.paths import resolve
from qubes_core.policy.evaluate import FixedSystem, ModelSystem, Policy, Request
from qubes_core.policy.explain import explain
from qubes_core.policy.rules import PolicySyntaxError


def explain_call(base_dir: str | None, source: str, target: str, service: str,
                 trace: bool = False) -> dict[str, Any]:
    """``{"action", "allowed", "target", "explanation": [lines]}`` for one call."""
    from qubes_core.app import Qubes as ModelQubes
    from qubes_core.mgmt.errors import UsageError

    paths = resolve(base_dir)
    try:
        policy = Policy.load(paths.policy_dir, paths.rpc_dir / "policy")
    except PolicySyntaxError as error:
        raise UsageError(f"the policy does not load: {error}") from None
    request = Request.parse(service, source, target)
    system = (ModelSystem(ModelQubes(paths.qubes_xml, lock=False))
              if paths.qubes_xml.exists() else FixedSystem([]))
    decision = policy.evaluate(request, system)
    return {
        "action": decision.action,
        "allowed": bool(decision.allowed),
        "target": decision.target if decision.action == "allow" else None,
        "explanation": explain(policy, request, system, trace=trace),
    }
