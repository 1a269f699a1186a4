"""Extensions: groups of event handlers, one concern each.

An extension's methods are marked with :func:`vm_handler` (events of VMs) or
:func:`app_handler` (events of the app). Extensions are found through the
``qubes_core.ext`` entry point group and registered once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qubes_core.events import Emitter
from qubes_core.plugins import EXTENSION_GROUP, load_plugin, plugin_specs

_loaded: dict[str, Extension] = {}


def vm_handler(*events: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an extension method as handler of these events on every VM."""
    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__dict__.setdefault("_ext_events", []).append(("vm", events))
        return func

    return decorator


def app_handler(*events: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an extension method as handler of these events on the app (global properties, ...)."""
    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__dict__.setdefault("_ext_events", []).append(("app", events))
        return func

    return decorator


class Extension:
    """Base of extensions; instantiate once, then :meth:`register`."""

    def _handlers(self) -> list[tuple[type[Emitter], str, Callable[..., Any]]]:
        from qubes_core.app import Qubes
        from qubes_core.vm.base import BaseVM

        targets: dict[str, type[Emitter]] = {"vm": BaseVM, "app": Qubes}
        found: list[tuple[type[Emitter], str, Callable[..., Any]]] = []
        for attr in dir(type(self)):
            func = getattr(type(self), attr, None)
            for target, events in getattr(func, "_ext_events", ()):
                found.extend((targets[target], event, getattr(self, attr)) for event in events)
        return found

    def register(self) -> None:
        for target, event, bound in self._handlers():
            target.add_class_handler(event, bound)

    def unregister(self) -> None:
        for target, event, bound in self._handlers():
            target.remove_class_handler(event, bound)


def load_extensions() -> dict[str, Extension]:
    """Register every extension (built-in and installed) not registered yet; return all."""
    for name, spec in plugin_specs(EXTENSION_GROUP).items():
        if name in _loaded:
            continue
        cls = load_plugin(EXTENSION_GROUP, name, spec)
        if cls is None:
            continue
        ext = cls()
        ext.register()
        _loaded[name] = ext
    return _loaded
