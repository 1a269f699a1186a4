"""dom0: the administrative domain. It always runs and cannot be started or killed."""

from __future__ import annotations

from typing import Any

from qubes_core import exc
from qubes_core.devices import validate_denied_list
from qubes_core.properties import LabelProperty, Property, VMProperty, read_only
from qubes_core.vm.base import BaseVM
from qubes_core.vm.qubesvm import (
    host_memory_mib,
    validate_disposable_template,
    validate_keyboard_layout,
)


def _only_dom0(vm: AdminVM, prop: Any, value: str) -> str:
    if value != "dom0":
        raise ValueError("the AdminVM is always named dom0")
    return value


def _only_zero(vm: AdminVM, prop: Any, value: int) -> int:
    if value != 0:
        raise ValueError("the AdminVM always has qid 0")
    return value


class AdminVM(BaseVM):
    """dom0: always running, named dom0 with qid 0; it cannot be started or killed."""

    qid = Property("qid", type=int, default=0, write_once=True, clone=False, load_stage=0,
                   setter=_only_zero, doc="Always 0.")
    name = Property("name", type=str, default="dom0", write_once=True, clone=False,
                    load_stage=1, setter=_only_dom0, doc="Always dom0.")
    label = LabelProperty("label", default=lambda vm: vm.app.get_label("black"),
                          doc="Label of dom0's windows.")
    default_dispvm = VMProperty(
        "default_dispvm", allow_none=True, load_stage=4, setter=validate_disposable_template,
        default=lambda vm: vm.app.default_dispvm,
        doc="AppVM whose DispVMs dom0 starts by default.")
    include_in_backups = Property("include_in_backups", type=bool, default=True,
                                  doc="Include dom0's home in backups by default.")
    updateable = Property("updateable", type=bool, setter=read_only, default=True,
                          persisted=False,
                          doc="dom0 is always updateable.")
    devices_denied = Property(
        "devices_denied", type=str, setter=lambda vm, prop, value: validate_denied_list(value),
        default="", doc="Device interfaces never attached to dom0.")
    keyboard_layout = Property("keyboard_layout", type=str, setter=validate_keyboard_layout,
                               default="us++", doc="Keyboard layout LAYOUT+VARIANT+OPTIONS.")
    maxmem = Property("maxmem", type=int, setter=read_only, persisted=False,
                      default=lambda vm: host_memory_mib(),
                      doc="Memory of the machine (MiB).")

    def icon_name(self) -> str:
        return "adminvm-black"

    def get_power_state(self) -> str:
        return "Running"

    def start(self) -> None:
        raise exc.QubesVMError(self, "dom0 cannot be started: it is always running")

    def kill(self) -> None:
        raise exc.QubesVMError(self, "dom0 cannot be killed")
