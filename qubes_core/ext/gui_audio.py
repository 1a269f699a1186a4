"""The ``guivm-NAME`` and ``audiovm-NAME`` tags, kept in step with each VM's guivm and
audiovm.

Qubes tags every VM with the VM that shows its windows and the one that plays its
sound, and users' qrexec policies match on those tags (``@tag:guivm-sys-gui``).
Each VM carries exactly one tag of each kind, naming its current guivm / audiovm
(set, or from the global default), and none when that is None: after a load, a
creation, a change of the VM's property or of the global default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qubes_core.ext import Extension, app_handler, vm_handler

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM

KINDS = ("guivm", "audiovm")


def sync_tag(vm: BaseVM, kind: str) -> None:
    """Make ``vm``'s ``KIND-*`` tags name its current KIND, and only that."""
    if not vm.has_property(kind):
        return
    target = getattr(vm, kind)
    wanted = f"{kind}-{target.name}" if target is not None else None
    for tag in [t for t in vm.tags if t.startswith(kind + "-") and t != wanted]:
        vm.tags.remove(tag)
    if wanted is not None and wanted not in vm.tags:
        vm.tags.add(wanted)


class GuiAudioTagsExtension(Extension):
    """Keeps the guivm-* / audiovm-* tags of every VM true."""

    @vm_handler("domain-load")
    def on_load(self, vm: BaseVM, event: str, **kwargs: Any) -> None:
        for kind in KINDS:
            sync_tag(vm, kind)

    @vm_handler("property-set:guivm", "property-reset:guivm")
    def on_guivm(self, vm: BaseVM, event: str, **kwargs: Any) -> None:
        sync_tag(vm, "guivm")

    @vm_handler("property-set:audiovm", "property-reset:audiovm")
    def on_audiovm(self, vm: BaseVM, event: str, **kwargs: Any) -> None:
        sync_tag(vm, "audiovm")

    @app_handler("domain-add")
    def on_domain_add(self, app: Qubes, event: str, vm: BaseVM, **kwargs: Any) -> None:
        for kind in KINDS:
            sync_tag(vm, kind)

    @app_handler("property-set:default_guivm", "property-reset:default_guivm",
                 "property-set:default_audiovm", "property-reset:default_audiovm")
    def on_default(self, app: Qubes, event: str, name: str, **kwargs: Any) -> None:
        kind = name.removeprefix("default_")
        for vm in app.domains:
            if not vm.property_is_set(kind):
                sync_tag(vm, kind)
