"""The ``qubes`` pillar of a VM: what a formula may know about the VM it configures.

As Qubes renders it: ``{type, template, netvm, features, tags}`` where
``type`` is ``admin``, ``template``, ``standalone`` or ``app`` (DispVMs count
as ``app``), and ``features`` holds only the ``vm-config.*`` and ``service.*``
ones: those are meant for the VM's own configuration, other features may be
internal to dom0 and are not handed to a VM's states.
"""

from __future__ import annotations

from typing import Any

from qubes_core.client.app import Qubes

TYPES = {"AdminVM": "admin", "TemplateVM": "template", "StandaloneVM": "standalone",
         "AppVM": "app", "DispVM": "app"}
FEATURE_PREFIXES = ("vm-config.", "service.")


def vm_pillar(app: Qubes, name: str) -> dict[str, Any]:
    """``{"qubes": {...}}`` for the VM, or ``{}`` if there is no VM of that name."""
    if name not in app.domains:
        return {}
    vm = app.domains[name]
    klass = vm.klass
    with app.cache():
        props = vm.property_get_all()
    features = {key: value for key, value in vm.features.items()
                if key.startswith(FEATURE_PREFIXES)}
    template = props.get("template")
    netvm = props.get("netvm")
    return {"qubes": {
        "type": TYPES.get(klass, "app"),
        "template": str(template) if template is not None else None,
        "netvm": str(netvm) if netvm is not None else None,
        "features": features,
        "tags": sorted(vm.tags),
    }}
