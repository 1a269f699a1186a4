"""``policy.RegisterArgument``: VMs register service arguments (see qubes_core.policy.register).

The generated default policy denies it; the admin allows it for a backend and
a service, e.g. ``policy.RegisterArgument +qubes.Gpg backend @anyvm allow target=dom0``.
"""

from __future__ import annotations

from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.policy.register import register_argument


@method("policy.RegisterArgument", scope="local", write=True, argument=True, payload=True,
        dest="vm", vm_facing=True, max_payload=64, default_action="deny")
async def register(call: ApiCall) -> None:
    """The source (backend) lets the destination (frontend) call ``ARG+PAYLOAD`` in it."""
    service = call.require_arg("the service whose argument is registered")
    register_argument(call.served().paths.rpc_dir / "policy", call.src.name, call.dest.name,
                      service, call.payload)
