"""Services: each ``service.NAME`` feature is exported to the VM's QubesDB.

``/qubes-service/NAME`` is ``1`` when the feature is true and ``0`` when it is
set but false; deleting the feature removes the key. The export is live: a
change reaches the running VM at once.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.ext import Extension, vm_handler

if TYPE_CHECKING:
    from qubes_core.vm.base import BaseVM

PREFIX = "service."
SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")
MAX_SERVICE_NAME = 48


def service_key(feature: str) -> str:
    """The QubesDB key a ``service.NAME`` feature is exported to: ``/qubes-service/NAME``."""
    return "/qubes-service/" + feature[len(PREFIX):]


def validate_service_name(name: str) -> None:
    """Refuse a service name that cannot be a ``/qubes-service/`` key (charset, 48 bytes)."""
    if (not name or len(name.encode()) > MAX_SERVICE_NAME or "/" in name
            or not SERVICE_NAME_RE.match(name)):
        raise exc.QubesValueError(
            f"invalid service name {name!r}: at most {MAX_SERVICE_NAME} bytes of letters, "
            "digits, '_', '.' and '-'"
        )


class ServicesExtension(Extension):
    """Exports ``service.*`` features to the VM's QubesDB and refuses bad service names."""

    @vm_handler("domain-feature-pre-set:service.*")
    def on_feature_pre_set(self, vm: BaseVM, event: str, feature: str, **kwargs: Any) -> None:
        validate_service_name(feature[len(PREFIX):])

    @vm_handler("domain-feature-set:service.*")
    def on_feature_set(self, vm: BaseVM, event: str, feature: str, value: str,
                       **kwargs: Any) -> None:
        if vm.qdb is not None:
            vm.qdb.write(service_key(feature), "1" if value else "0")

    @vm_handler("domain-feature-delete:service.*")
    def on_feature_delete(self, vm: BaseVM, event: str, feature: str, **kwargs: Any) -> None:
        if vm.qdb is not None:
            vm.qdb.rm(service_key(feature))

    @vm_handler("domain-qdb-create")
    def on_qdb_create(self, vm: BaseVM, event: str, **kwargs: Any) -> None:
        """A new QubesDB (the VM starts): write every service."""
        for feature, value in vm.features.items():
            if feature.startswith(PREFIX):
                vm.qdb.write(service_key(feature), "1" if value else "0")
