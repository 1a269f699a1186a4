"""Methods of the internal socket, for dom0 services (qrexec policy daemon, tools)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method

if TYPE_CHECKING:
    from qubes_core.vm.base import BaseVM


def _name(vm: BaseVM | None) -> str | None:
    return None if vm is None else vm.name


def system_info(vms: Iterable[BaseVM], states: dict[int, str]) -> dict[str, Any]:
    """What the policy evaluator needs to know about each domain (``states``: their
    power states by qid)."""
    domains = {}
    for vm in vms:
        domains[vm.name] = {
            "tags": list(vm.tags),
            "type": vm.klass,
            "template_for_dispvms": bool(vm.template_for_dispvms),
            "default_dispvm": _name(vm.default_dispvm),
            "management_dispvm": _name(vm.management_dispvm),
            "template": _name(vm.template),
            "icon": vm.label.icon if vm.property_own_value("label") or vm.qid == 0 else "",
            "power_state": states[vm.qid],
            "uuid": str(vm.uuid),
        }
    return {"domains": domains}


@method("internal.GetSystemInfo", scope="global", read=True, dest="adminvm")
async def get_system_info(call: ApiCall) -> str:
    """Every domain's tags, type and DispVM settings as JSON, for the policy evaluator."""
    vms = list(call.app.domains)
    states = await call.app.runtime.power_states(vms)
    return json.dumps(system_info(vms, states), sort_keys=True)
