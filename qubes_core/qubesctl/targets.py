"""Which VMs a run configures, in which order, and which of them the top file gives states.

Templates come first (an AppVM sees its template's changes only once the
template is done), then the other VMs, each group in name order. dom0 and
DispVMs are never targets: dom0 runs through ``salt-call --local``, and a
DispVM does not outlive its use. Whether the top file gives a VM anything is
decided for all selected VMs in one pass over the merged top data, with each
VM's own rendered pillar for ``I@``/compound matches (Qubes asks Salt once per
VM, 2–3 s each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qubes_core import exc

SELECTABLE = ("TemplateVM", "StandaloneVM", "AppVM")


@dataclass
class Target:
    """One VM to configure."""

    name: str
    klass: str
    states: list[str] = field(default_factory=list)
    pillar: dict[str, Any] = field(default_factory=dict)

    @property
    def is_template(self) -> bool:
        return self.klass == "TemplateVM"


def select(domains: dict[str, str], args: Any) -> list[Target]:
    """The targets the options name, templates first; ``domains`` maps name → class.

    An explicit name that is not a VM, or is dom0 or a DispVM, is a usage error.
    """
    wanted: dict[str, str] = {}
    classes = set()
    if args.all or args.templates:
        classes.add("TemplateVM")
    if args.all or args.standalones:
        classes.add("StandaloneVM")
    if args.all or args.app:
        classes.add("AppVM")
    for name, klass in domains.items():
        if klass in classes:
            wanted[name] = klass
    for name in args.target_names:
        named = domains.get(name)
        if named is None:
            raise exc.QubesValueError(f"--targets: no VM named {name!r}")
        if named not in SELECTABLE:
            raise exc.QubesValueError(
                f"--targets: {name} is a {named}; only TemplateVM, StandaloneVM and AppVM "
                "can be targets (dom0 runs unless --skip-dom0)")
        wanted[name] = named
    return order([Target(name, klass) for name, klass in wanted.items()])


def order(targets: list[Target]) -> list[Target]:
    """Templates first, then the rest, each in name order."""
    return sorted(targets, key=lambda t: (not t.is_template, t.name))


def batches(targets: list[Target]) -> list[list[Target]]:
    """The templates, then the rest (a group waits for the one before it)."""
    groups = [[t for t in targets if t.is_template], [t for t in targets if not t.is_template]]
    return [g for g in groups if g]
