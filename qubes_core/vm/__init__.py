"""VM classes. Third parties add classes through the ``qubes_core.vm`` entry points."""

from __future__ import annotations

import functools
import importlib.metadata
import logging

from qubes_core import exc
from qubes_core.vm.base import BaseVM

log = logging.getLogger("qubes.vm")

BUILTIN_CLASSES = {
    "AdminVM": "qubes_core.vm.adminvm:AdminVM",
    "AppVM": "qubes_core.vm.appvm:AppVM",
    "TemplateVM": "qubes_core.vm.templatevm:TemplateVM",
    "StandaloneVM": "qubes_core.vm.standalonevm:StandaloneVM",
    "DispVM": "qubes_core.vm.dispvm:DispVM",
}


def _load(spec: str) -> type[BaseVM]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


@functools.cache
def vm_classes() -> dict[str, type[BaseVM]]:
    """Every VM class by name: the built-in ones, then those of installed plugins."""
    classes = {name: _load(spec) for name, spec in BUILTIN_CLASSES.items()}
    for entry in importlib.metadata.entry_points(group="qubes_core.vm"):
        if entry.name in classes:
            continue
        try:
            classes[entry.name] = entry.load()
        except Exception:  # a broken plugin must not stop the system
            log.exception("cannot load VM class %s from %s", entry.name, entry.value)
    return classes


def get_vm_class(name: str) -> type[BaseVM]:
    """The VM class called ``name`` (built-in or plugin); an unknown name is refused, listing the
    known ones.
    """
    try:
        return vm_classes()[name]
    except KeyError:
        raise exc.QubesValueError(
            f"no such VM class: {name!r} (known: {', '.join(sorted(vm_classes()))})"
        ) from None
