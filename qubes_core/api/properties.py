"""Property methods: ``admin.vm.property.*`` (one VM) and ``admin.property.*`` (global).

Wire forms (FACTS, Admin API): ``Get`` gives ``default=True|False type=T VALUE``;
``GetAll`` one such line per property, prefixed by the name, with backslashes
doubled and newlines as ``\\n``; ``Set`` takes the new value as payload (``""``
for None); ``Reset`` returns the property to its default.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.api.untrusted import escape_line_value
from qubes_core.properties import Property, PropertyHolder, StatelessProperty
from qubes_core.vm.base import BaseVM


def _holder(call: ApiCall) -> PropertyHolder:
    return call.app if call.method.startswith("admin.property.") else call.dest


def _prop(holder: PropertyHolder, name: str) -> Property:
    return holder.property_get_def(name)


def value_text(holder: Any, prop: Property) -> str | None:
    """The value as the API shows it; None when the property has no value at all."""
    try:
        value = getattr(holder, prop.__name__)
    except AttributeError:
        return None
    return prop.serialize(value)


def describe(holder: Any, prop: Property, escape: bool = False) -> str:
    """``default=True|False type=T VALUE`` for ``prop`` of ``holder``."""
    text = value_text(holder, prop)
    is_default = not holder.property_is_set(prop.__name__)
    if text is None:
        return f"default=True type={prop.api_type} "
    if escape:
        text = escape_line_value(text)
    return f"default={is_default} type={prop.api_type} {text}"


def _reads_runtime(prop: Property) -> bool:
    return isinstance(prop, StatelessProperty) and prop.reads_runtime


async def _describe_off_loop(holder: PropertyHolder, props: list[Property],
                             escape: bool = False) -> dict[str, str]:
    """:func:`describe` of those of ``props`` whose value the runtime gives, in a
    worker thread when the runtime's reads wait for another process (libvirtd): the
    loop stays free."""
    slow = [prop for prop in props if _reads_runtime(prop)]
    if not slow or not isinstance(holder, BaseVM) or not holder.app.runtime.slow_reads:
        return {}
    return await asyncio.to_thread(
        lambda: {prop.__name__: describe(holder, prop, escape) for prop in slow})


def _property_list(call: ApiCall) -> str:
    return "".join(p.__name__ + "\n" for p in _holder(call).property_list())


async def _property_get(call: ApiCall) -> str:
    holder = _holder(call)
    prop = _prop(holder, call.arg)
    found = await _describe_off_loop(holder, [prop])
    return found.get(prop.__name__) or describe(holder, prop)


async def _property_get_all(call: ApiCall) -> str:
    holder = _holder(call)
    props = holder.property_list()
    found = await _describe_off_loop(holder, props, escape=True)
    return "".join(f"{p.__name__} {found.get(p.__name__) or describe(holder, p, escape=True)}\n"
                   for p in props)


def _property_get_default(call: ApiCall) -> str | None:
    holder = _holder(call)
    prop = _prop(holder, call.arg)
    if not prop.has_default:
        return None
    try:
        value = prop.get_default(holder)
    except AttributeError:
        return None
    return f"type={prop.api_type} {prop.serialize(value)}"


def _property_help(call: ApiCall) -> str:
    holder = _holder(call)
    return (_prop(holder, call.arg).__doc__ or "").strip()


def _property_set(call: ApiCall) -> None:
    holder = _holder(call)
    prop = _prop(holder, call.arg)
    value = call.payload_text(f"value of property {call.arg!r}")
    setattr(holder, prop.__name__, value)


def _property_reset(call: ApiCall) -> None:
    holder = _holder(call)
    prop = _prop(holder, call.arg)
    if not prop.has_default:
        raise exc.QubesValueError(
            f"property {prop.__name__!r} of {holder} has no default: set a value instead")
    if holder.property_is_set(prop.__name__):
        holder.property_reset(prop.__name__)


def _declare(kind: str, scope: str, dest: str) -> None:
    """Declare the seven property methods of ``admin.<kind>property``."""
    prefix = f"admin.{kind}property."

    async def list_(call: ApiCall) -> str:
        return _property_list(call)

    async def get(call: ApiCall) -> str:
        return await _property_get(call)

    async def get_all(call: ApiCall) -> str:
        return await _property_get_all(call)

    async def get_default(call: ApiCall) -> str | None:
        return _property_get_default(call)

    async def help_(call: ApiCall) -> str:
        return _property_help(call)

    async def set_(call: ApiCall) -> None:
        _property_set(call)

    async def reset(call: ApiCall) -> None:
        _property_reset(call)

    method(prefix + "List", scope=scope, read=True, dest=dest)(list_)
    method(prefix + "Get", scope=scope, read=True, argument=True, dest=dest)(get)
    # VMs allowed some properties try GetAll first: deny it quietly.
    method(prefix + "GetAll", scope=scope, read=True, dest=dest, quiet_deny=True)(get_all)
    method(prefix + "GetDefault", scope=scope, read=True, argument=True, dest=dest)(get_default)
    method(prefix + "Help", scope=scope, read=True, argument=True, dest=dest)(help_)
    method(prefix + "Set", scope=scope, write=True, argument=True, payload=True,
           dest=dest)(set_)
    method(prefix + "Reset", scope=scope, write=True, argument=True, dest=dest)(reset)


_declare("vm.", "local", "vm")
_declare("", "global", "adminvm")
