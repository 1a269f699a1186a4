"""The Admin API served by qubesd.

``API_MODULES`` names every module that declares methods (see
:mod:`qubes_core.api.registry`); importing them fills the registry.
"""

API_MODULES = [
    "qubes_core.api.vm",
    "qubes_core.api.lifecycle",
    "qubes_core.api.properties",
    "qubes_core.api.features",
    "qubes_core.api.labels",
    "qubes_core.api.events",
    "qubes_core.api.devices",
    "qubes_core.api.notes",
    "qubes_core.api.firewall",
    "qubes_core.api.storage",
    "qubes_core.api.misc",
    "qubes_core.api.internal",
    "qubes_core.api.policy",
    "qubes_core.api.backup",
]
