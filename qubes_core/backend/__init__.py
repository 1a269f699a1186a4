"""Runtimes: what actually runs VMs (libvirt with Xen or its test driver, the sandbox).

The model asks its runtime for a VM's power state and start time and never
caches them. :class:`OfflineRuntime` is the runtime of a qubes.xml edited with
no hypervisor at hand (installation, recovery, unit tests): nothing runs.
"""

from __future__ import annotations

from typing import Any


class Runtime:
    """Interface of a runtime, as the model sees it."""

    name = "abstract"

    def state(self, vm: Any) -> str:
        raise NotImplementedError

    def start_time(self, vm: Any) -> float | None:
        raise NotImplementedError


class OfflineRuntime(Runtime):
    """No hypervisor: every VM but dom0 is halted."""

    name = "offline"

    def state(self, vm: Any) -> str:
        return "Halted"

    def start_time(self, vm: Any) -> float | None:
        return None
