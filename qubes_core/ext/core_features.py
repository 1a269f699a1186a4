"""Features a VM reports about itself (qubes.FeaturesRequest, qubes.NotifyTools).

The request is untrusted input from inside the VM: every key and value is
checked against a narrow charset before anything is set. Only templates and
standalone VMs are listened to (a template-based VM would otherwise speak for
its template); capabilities such as ``qrexec`` or ``gui`` are set only when the
user has not set them, so a template cannot override the user's choice.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.ext import Extension, vm_handler

if TYPE_CHECKING:
    from qubes_core.vm.base import BaseVM

log = logging.getLogger("qubes.ext.core_features")

MAX_KEYS = 256
MAX_VALUE_LENGTH = 128
KEY_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
VALUE_RE = re.compile(r"^[a-zA-Z0-9_.+-]*$")

# Capabilities the user may have decided already: set only if absent.
CAPABILITIES = ("qrexec", "gui", "gui-emulated", "qubes-firewall", "vmexec")
# Facts about the installed OS: always taken from the latest report.
OS_FACTS: dict[str, re.Pattern[str]] = {
    "os": re.compile(r"^[A-Za-z]{1,32}$"),
    "os-distribution": re.compile(r"^[a-z0-9_-]{1,32}$"),
    "os-distribution-like": re.compile(r"^[a-z0-9_ -]{1,64}$"),
    "os-version": re.compile(r"^([0-9]{1,8}(\.[0-9]{1,8}){0,3}|rolling)$"),
    "os-eol": re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
    "qubes-agent-version": re.compile(r"^[0-9]{1,4}(\.[0-9]{1,4}){0,3}$"),
}
SUPPORTED_PREFIXES = ("supported-service.", "supported-rpc.", "supported-feature.")


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise exc.QubesValueError("features request: value is not ASCII") from None
    return value


def parse_features_request(untrusted: Mapping[str | bytes, str | bytes]) -> dict[str, str]:
    """Validate a whole request; raise QubesValueError naming the first bad entry."""
    if len(untrusted) > MAX_KEYS:
        raise exc.QubesValueError(f"features request: more than {MAX_KEYS} features")
    checked: dict[str, str] = {}
    for untrusted_key, untrusted_value in untrusted.items():
        key = _text(untrusted_key)
        if not KEY_RE.match(key):
            raise exc.QubesValueError(f"features request: invalid feature name {key!r}")
        value = _text(untrusted_value)
        if key in OS_FACTS:
            valid = bool(OS_FACTS[key].match(value))
        elif key in CAPABILITIES:
            valid = value in ("", "0", "1")
        else:
            valid = len(value) <= MAX_VALUE_LENGTH and bool(VALUE_RE.match(value))
        if not valid:
            raise exc.QubesValueError(f"features request: invalid value for {key!r}")
        checked[key] = value
    return checked


class CoreFeaturesExtension(Extension):
    """Sets the features a template or StandaloneVM reports, once every one is checked.

    The first report of ``qrexec`` fires ``template-postinstall``.
    """

    @vm_handler("features-request")
    def on_features_request(self, vm: BaseVM, event: str,
                            untrusted_features: Mapping[Any, Any]) -> None:
        if vm.template is not None:
            log.info("ignoring features request from %s: it is template-based", vm)
            return
        requested = parse_features_request(untrusted_features)
        had_qrexec = "qrexec" in vm.features
        for key in CAPABILITIES:
            if key in requested and key not in vm.features:
                vm.features[key] = requested[key] == "1"
        for key in OS_FACTS:
            if key in requested:
                vm.features[key] = requested[key]
        for key, value in requested.items():
            if key.startswith(SUPPORTED_PREFIXES):
                vm.features[key] = value not in ("", "0")
        if not had_qrexec and vm.features.get("qrexec"):
            self._fire_postinstall(vm)

    @staticmethod
    def _fire_postinstall(vm: BaseVM) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            vm.fire_event("template-postinstall")
        else:
            loop.create_task(vm.fire_event_async("template-postinstall"))
