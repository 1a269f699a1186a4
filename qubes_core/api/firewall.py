"""Firewall methods: ``admin.vm.firewall.Get``, ``Set`` and ``Reload``.

The payload of ``Set`` and the reply of ``Get`` are the API text form, one rule
a line (see :mod:`qubes_core.firewall.rules`). ``Set`` replaces the whole list
and checks every rule before anything changes; ``expire=+N`` counts from now.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.firewall import (
    Firewall,
    FirewallFileError,
    RuleError,
    clock_of,
    parse_api_rules,
)
from qubes_core.firewall.vmfirewall import firewall_of
from qubes_core.vm.qubesvm import QubesVM


@contextlib.contextmanager
def _wire_errors() -> Iterator[None]:
    """Reply with the exception types existing clients know (the wire carries the name)."""
    try:
        yield
    except RuleError as err:
        raise exc.QubesValueError(str(err)) from None
    except FirewallFileError as err:
        raise exc.QubesException(str(err)) from None


def _firewall(call: ApiCall) -> Firewall:
    if not isinstance(call.dest, QubesVM):
        raise exc.QubesVMError(call.dest, f"{call.dest} has no firewall (it has no network)")
    return firewall_of(call.dest)


@method("admin.vm.firewall.Get", scope="local", read=True)
async def firewall_get(call: ApiCall) -> str:
    """The VM's outbound firewall rules in API text form, one a line."""
    firewall = _firewall(call)
    with _wire_errors():
        await firewall.load_async()
        return firewall.api_text()


@method("admin.vm.firewall.Set", scope="local", write=True, payload=True)
async def firewall_set(call: ApiCall) -> None:
    """Replace all of the VM's firewall rules; one bad rule refuses the whole list."""
    firewall = _firewall(call)
    try:
        text = call.payload.decode("ascii")
    except UnicodeDecodeError:
        raise exc.QubesValueError("firewall rules must be ASCII text") from None
    with _wire_errors():
        rules = parse_api_rules(text, now=clock_of(call.app).time())
        await firewall.set_rules_async(rules)


@method("admin.vm.firewall.Reload", scope="local", execute=True)
async def firewall_reload(call: ApiCall) -> None:
    """Read the VM's firewall.xml again and re-export it to the netvm."""
    with _wire_errors():
        await _firewall(call).reload_async()
