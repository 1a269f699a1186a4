"""VM classes. Third parties add classes through the ``qubes_core.vm`` entry points."""

from __future__ import annotations

import functools

from qubes_core import exc
from qubes_core.plugins import VM_GROUP, load_plugins
from qubes_core.vm.base import BaseVM


@functools.cache
def vm_classes() -> dict[str, type[BaseVM]]:
    """Every VM class by name: the built-in ones, then those of installed plugins."""
    return load_plugins(VM_GROUP)


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
