"""qrexec policy: parse the policy tree, decide calls, generate and install defaults.

One engine serves the sandbox runtime's qrexec router, the Admin API
permission check for calls from VMs and the ``qrexec-policy-explain`` command.
"""

from qubes_core.policy.evaluate import (
    Decision,
    FixedSystem,
    ModelSystem,
    Policy,
    Request,
    domain_info,
    evaluate,
)
from qubes_core.policy.rules import PolicySyntaxError, Rule
from qubes_core.policy.tokens import DomainInfo

__all__ = ["Decision", "DomainInfo", "FixedSystem", "ModelSystem", "Policy",
           "PolicySyntaxError", "Request", "Rule", "domain_info", "evaluate"]
