"""Methods VMs call (``qubes.*``, on the misc socket).

A VM reaches these only through qrexec, whose policy already allowed the call,
so they are granted unless an ``admin-permission`` handler refuses. Everything a
VM sends is untrusted: features go through ``features-request``, whose handler
(``qubes_core.ext.core_features``) validates them before anything is set.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.vm.base import BaseVM

FEATURES_PREFIX = "/features-request/"
TOOLS_PREFIX = "/qubes-tools/"
TOOLS_KEYS = ("qrexec", "gui", "gui-emulated", "default-user", "os")
MAX_UPDATE_COUNT_DIGITS = 9


def _qdb(vm: BaseVM) -> Any:
    if vm.qdb is None:
        raise exc.QubesVMError(vm, f"{vm} has no QubesDB to read its request from")
    return vm.qdb


@method("qubes.FeaturesRequest", scope="local", write=True, dest="adminvm", vm_facing=True)
async def features_request(call: ApiCall) -> None:
    """The VM wrote its features under ``/features-request/`` of its QubesDB."""
    untrusted = {key[len(FEATURES_PREFIX):]: value
                 for key, value in _qdb(call.src).multiread(FEATURES_PREFIX).items()}
    await call.src.fire_event_async("features-request", untrusted_features=untrusted)


@method("qubes.NotifyTools", scope="local", write=True, dest="adminvm", vm_facing=True)
async def notify_tools(call: ApiCall) -> None:
    """Older agents: the same, from the fixed keys under ``/qubes-tools/``."""
    qdb = _qdb(call.src)
    untrusted = {}
    for key in TOOLS_KEYS:
        value = qdb.read(TOOLS_PREFIX + key)
        if value:
            untrusted[key] = value
    await call.src.fire_event_async("features-request", untrusted_features=untrusted)


@method("qubes.NotifyUpdates", scope="local", write=True, payload=True, dest="adminvm",
        vm_facing=True, max_payload=16)
async def notify_updates(call: ApiCall) -> None:
    """The VM counted its pending updates (payload: a decimal number)."""
    untrusted_count = call.payload.strip()
    if (not untrusted_count.isdigit() or len(untrusted_count) > MAX_UPDATE_COUNT_DIGITS):
        raise exc.ProtocolError("qubes.NotifyUpdates: payload must be a decimal count")
    count = int(untrusted_count)
    vm = call.src
    template = vm.template
    if template is None:
        vm.features["updates-available"] = bool(count)
        return
    # A template-based VM only hints at its template's updates; a running
    # template reports for itself, and an outdated VM saw an older root.
    if count == 0 or template.is_running():
        return
    if isinstance(vm, QubesVM) and vm.storage.outdated_volumes():
        return
    template.features["updates-available"] = True


@method("qubes.GetDate", scope="local", read=True, dest="adminvm", vm_facing=True)
async def get_date(call: ApiCall) -> str:
    """dom0's time in UTC, to the second, for a VM to set its clock by."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now.isoformat() + "\n"
