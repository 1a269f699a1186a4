"""The method registry: every Admin API method is declared here, once.

A method is declared with :func:`method` on its handler. The declaration says
what the request may carry (an argument, a payload), which destination it
accepts, on which socket it is served, and how the policy classifies it
(``scope`` local|global and the ``read``/``write``/``execute`` flags), and what
the default policy does with it (``default_action`` for a method VMs call,
``quiet_deny`` for a listing VMs are expected to try). The server
enforces the request shape from it, and the qrexec policy and the rpc install
lists are generated from :func:`all_methods` alone, so they cannot drift from
what the server serves.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from qubes_core.api.call import NoReply

SCOPES = ("local", "global")
DESTS = ("vm", "adminvm", "any")
SOCKETS = ("admin", "internal", "misc")
DEFAULT_ACTIONS = ("allow", "deny")
METHOD_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,127}$")

Handler = Callable[[Any], Awaitable[str | bytes | None | NoReply]]


@dataclass(frozen=True)
class MethodSpec:
    """What one method accepts and how the policy classifies it.

    ``dest``: ``"vm"`` — one domain named by the request (dom0 included, as for
    its properties and features); ``"adminvm"`` — the request must name dom0
    (``keyword adminvm``): the call concerns the whole system; ``"any"`` — dom0
    means "all of them", a VM means "that one" (``admin.vm.List``,
    ``admin.Events``).
    """

    name: str
    scope: str
    read: bool
    write: bool
    execute: bool
    argument: bool
    payload: bool
    dest: str
    socket: str
    vm_facing: bool
    handler: Handler
    # The argument may be left out although the method takes one.
    argument_optional: bool = False
    # Longest payload accepted (the wire limit is 64 KiB for the whole request).
    max_payload: int = 65536
    # A write whose handler does slow work (a volume copy) without the server's
    # write lock and takes it only around its change of the model, with
    # ``call.model_change()``; other writers are not held up by the slow part.
    own_write_lock: bool = False
    # What the default policy does with a call from a VM (methods VMs call only):
    # "deny" keeps it denied until the admin allows it.
    default_action: str = "allow"
    # A denied call is expected (a listing tried for every item): deny without notice.
    quiet_deny: bool = False

    @property
    def policy_group(self) -> str:
        """The policy include this method belongs to, e.g. ``admin-local-ro``."""
        rights = "rwx" if (self.write or self.execute) else "ro"
        return f"admin-{self.scope}-{rights}"


_registry: dict[str, MethodSpec] = {}
_imported = False


def method(name: str, *, scope: str, read: bool = False, write: bool = False,
           execute: bool = False, argument: bool = False, payload: bool = False,
           dest: str = "vm", socket: str | None = None, vm_facing: bool = False,
           argument_optional: bool = False, max_payload: int = 65536,
           own_write_lock: bool = False, default_action: str = "allow",
           quiet_deny: bool = False) -> Callable[[Handler], Handler]:
    """Declare ``name`` as served by the decorated ``async def handler(call)``.

    The decorator may be stacked to serve several names with one handler.
    """
    if not METHOD_NAME_RE.match(name):
        raise ValueError(f"invalid method name {name!r}")
    if scope not in SCOPES:
        raise ValueError(f"{name}: scope must be one of {SCOPES}, not {scope!r}")
    if dest not in DESTS:
        raise ValueError(f"{name}: dest must be one of {DESTS}, not {dest!r}")
    if not (read or write or execute):
        raise ValueError(f"{name}: declare at least one of read, write, execute")
    if own_write_lock and not write:
        raise ValueError(f"{name}: own_write_lock only applies to a write method")
    if default_action not in DEFAULT_ACTIONS:
        raise ValueError(f"{name}: default_action must be one of {DEFAULT_ACTIONS}, "
                         f"not {default_action!r}")
    if default_action != "allow" and not vm_facing:
        raise ValueError(f"{name}: default_action only applies to a method VMs call")
    if socket is None:
        socket = "misc" if vm_facing else (
            "internal" if name.startswith("internal.") else "admin")
    if socket not in SOCKETS:
        raise ValueError(f"{name}: socket must be one of {SOCKETS}, not {socket!r}")

    def decorator(func: Handler) -> Handler:
        spec = MethodSpec(name=name, scope=scope, read=read, write=write, execute=execute,
                          argument=argument, payload=payload, dest=dest, socket=socket,
                          vm_facing=vm_facing, handler=func,
                          argument_optional=argument_optional, max_payload=max_payload,
                          own_write_lock=own_write_lock, default_action=default_action,
                          quiet_deny=quiet_deny)
        register(spec)
        return func

    return decorator


def register(spec: MethodSpec) -> None:
    """Add ``spec``; a second, different declaration of the same name is an error."""
    existing = _registry.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"method {spec.name} is declared twice "
                         f"({existing.handler.__module__} and {spec.handler.__module__})")
    _registry[spec.name] = spec


def import_api_modules() -> None:
    """Import every module named in ``qubes_core.api.API_MODULES`` (once)."""
    global _imported
    if _imported:
        return
    from qubes_core.api import API_MODULES

    for module in API_MODULES:
        importlib.import_module(module)
    _imported = True


def all_methods() -> list[MethodSpec]:
    """Every declared method, sorted by name."""
    import_api_modules()
    return [_registry[name] for name in sorted(_registry)]


def get_method(name: str) -> MethodSpec | None:
    """The declaration the server dispatches ``name`` by; None for a method nobody serves."""
    import_api_modules()
    return _registry.get(name)
