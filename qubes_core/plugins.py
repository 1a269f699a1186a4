"""The one table of built-in plugins, and how plugins of every kind are found.

Built-in VM classes, extensions and storage drivers are listed here and
nowhere else: ``setup.py`` reads :data:`BUILTIN` to declare them as entry points
(so other tools see them as plugins), and the loaders take them from here first,
so the built-in ones are there even when the package's metadata is stale or
missing (a checkout on ``sys.path``). Third parties add theirs through the same
entry point groups; a third-party entry never replaces a built-in one.

This module imports nothing of the project: ``setup.py`` runs it on its own.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import Any

log = logging.getLogger("qubes.plugins")

VM_GROUP = "qubes_core.vm"
EXTENSION_GROUP = "qubes_core.ext"
STORAGE_GROUP = "qubes_core.storage"

#: entry point group -> plugin name -> ``module:attribute``
BUILTIN: dict[str, dict[str, str]] = {
    VM_GROUP: {
        "AdminVM": "qubes_core.vm.adminvm:AdminVM",
        "AppVM": "qubes_core.vm.appvm:AppVM",
        "TemplateVM": "qubes_core.vm.templatevm:TemplateVM",
        "StandaloneVM": "qubes_core.vm.standalonevm:StandaloneVM",
        "DispVM": "qubes_core.vm.dispvm:DispVM",
    },
    EXTENSION_GROUP: {
        "pools": "qubes_core.ext.pools:PoolsExtension",
        "services": "qubes_core.ext.services:ServicesExtension",
        "core_features": "qubes_core.ext.core_features:CoreFeaturesExtension",
        "admin_policy": "qubes_core.ext.admin_policy:AdminPolicyExtension",
        "firewall": "qubes_core.ext.firewall:FirewallExtension",
        "templates": "qubes_core.ext.templates:TemplatesExtension",
        "gui_audio": "qubes_core.ext.gui_audio:GuiAudioTagsExtension",
    },
    STORAGE_GROUP: {
        "file-reflink": "qubes_core.storage.reflink:FileReflinkPool",
        "file": "qubes_core.storage.file:FilePool",
        "linux-kernel": "qubes_core.storage.kernel:LinuxKernelPool",
    },
}


def entry_points_table() -> dict[str, list[str]]:
    """:data:`BUILTIN` in the form ``setup(entry_points=...)`` takes."""
    return {group: [f"{name} = {spec}" for name, spec in plugins.items()]
            for group, plugins in BUILTIN.items()}


def plugin_specs(group: str) -> dict[str, str]:
    """Every plugin of ``group`` by name (``module:attribute``): built-in ones first, then
    those installed by other packages."""
    specs = dict(BUILTIN[group])
    for entry in importlib.metadata.entry_points(group=group):
        specs.setdefault(entry.name, entry.value)
    return specs


def load_plugin(group: str, name: str, spec: str) -> Any | None:
    """The object ``spec`` names; None (logged) when it cannot be loaded: a broken plugin
    must not stop the system."""
    module, _, attr = spec.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception:
        log.exception("cannot load %s plugin %s from %s", group, name, spec)
        return None
    return found


def load_plugins(group: str) -> dict[str, Any]:
    """Every plugin of ``group`` that loads, by name."""
    loaded = {}
    for name, spec in plugin_specs(group).items():
        plugin = load_plugin(group, name, spec)
        if plugin is not None:
            loaded[name] = plugin
    return loaded
