"""dom0: the administrative domain. It always runs and cannot be started or killed."""

from __future__ import annotations

from typing import Any

from qubes_core import exc
from qubes_core.properties import LabelProperty, Property
from qubes_core.vm.base import BaseVM


def _only_dom0(vm: Any, prop: Any, value: str) -> str:
    if value != "dom0":
        raise ValueError("the AdminVM is always named dom0")
    return value


def _only_zero(vm: Any, prop: Any, value: int) -> int:
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

    def get_power_state(self) -> str:
        return "Running"

    def start(self) -> None:
        raise exc.QubesVMError(self, "dom0 cannot be started: it is always running")

    def kill(self) -> None:
        raise exc.QubesVMError(self, "dom0 cannot be killed")
