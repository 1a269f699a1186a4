"""Deciding a qrexec call: the first rule that matches wins.

The decision names the resolved target (a qube name, ``dom0`` or
``@dispvm:VM`` for a new DispVM), the user, and the rule that decided, so
that the router, the Admin API permission check and the explain command
all give the same answer for the same policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qubes_core.policy.parser import parse_policy
from qubes_core.policy.rules import Rule
from qubes_core.policy.tokens import (
    ADMINVM,
    DEFAULT,
    DISPVM,
    DISPVM_PREFIX,
    AdminVM,
    DomainInfo,
    SystemInfo,
    match_source,
    normalise_source,
    normalise_target,
)

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM


@dataclass(frozen=True)
class Request:
    """A call: ``service+argument`` from ``source`` to the requested ``target``."""

    service: str
    argument: str
    source: str
    target: str

    @classmethod
    def parse(cls, service_and_arg: str, source: str, target: str) -> Request:
        service, _, argument = service_and_arg.partition("+")
        return cls(service, argument, source, target)

    def __str__(self) -> str:
        return f"{self.service}+{self.argument} {self.source} -> {self.target}"


@dataclass
class Decision:
    """allow, deny or ask, and why."""

    action: str
    reason: str
    rule: Rule | None = None
    target: str | None = None
    user: str | None = None
    notify: bool = False
    autostart: bool = True
    targets_for_ask: list[str] = field(default_factory=list)
    default_target: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


class FixedSystem:
    """A system described by a table (tests, benchmarks, offline explanations)."""

    def __init__(self, domains: Iterable[DomainInfo]):
        self._domains = {info.name: info for info in domains}

    def domain(self, name: str) -> DomainInfo | None:
        return self._domains.get(name)

    def names(self) -> list[str]:
        return sorted(self._domains)


def domain_info(vm: BaseVM) -> DomainInfo:
    """What the policy needs of a VM of the model."""
    default_dispvm = vm.default_dispvm
    template = vm.template if vm.disposable else None
    return DomainInfo(
        name=vm.name, klass=type(vm).__name__, tags=frozenset(vm.tags),
        default_dispvm=default_dispvm.name if default_dispvm is not None else None,
        template_for_dispvms=bool(vm.template_for_dispvms),
        dispvm_template=template.name if template is not None else None,
    )


class ModelSystem:
    """The live model of an app: every lookup reads the current VMs."""

    def __init__(self, app: Qubes):
        self.app = app

    def domain(self, name: str) -> DomainInfo | None:
        vm = self.app.domains.by_name(name)
        return domain_info(vm) if vm is not None else None

    def names(self) -> list[str]:
        return self.app.domains.keys()


class Policy:
    """The rules of one policy tree, indexed by service for lookup."""

    def __init__(self, rules: list[Rule], files: list[Path] | None = None):
        self.rules = rules
        self.files = files or []
        self._by_service: dict[str, list[Rule]] = {}

    @classmethod
    def load(cls, policy_dir: Path, legacy_dir: Path | None = None) -> Policy:
        parsed = parse_policy(Path(policy_dir), legacy_dir)
        return cls(parsed.rules, parsed.files)

    def rules_for(self, service: str) -> list[Rule]:
        """The rules that may apply to ``service``, in order (``*`` rules included)."""
        found = self._by_service.get(service)
        if found is None:
            found = [rule for rule in self.rules
                     if rule.service is None or rule.service == service]
            self._by_service[service] = found
        return found

    def find_rule(self, request: Request, system: SystemInfo) -> Rule | None:
        source_name = normalise_source(request.source)
        target = normalise_target(request.target)
        source = system.domain("dom0" if source_name == ADMINVM else source_name)
        for rule in self.rules_for(request.service):
            if (rule.matches_call(request.service, request.argument)
                    and match_source(rule.source, source_name, system)
                    and rule.target.match(target, system, source)):
                return rule
        return None

    def evaluate(self, request: Request, system: SystemInfo) -> Decision:
        return evaluate(self, request, system)


def evaluate(policy: Policy, request: Request, system: SystemInfo) -> Decision:
    """The decision on ``request``; every failure to resolve is a deny with its reason."""
    source_name = normalise_source(request.source)
    source = system.domain("dom0" if source_name == ADMINVM else source_name)
    if source is None:
        return Decision("deny", f"source {request.source!r} does not exist")
    target = normalise_target(request.target)
    if not _valid_request_target(target, system):
        return Decision("deny", f"requested target {request.target!r} does not exist")
    rule = policy.find_rule(request, system)
    if rule is None:
        return Decision("deny", "no rule matched (default deny)")
    notify = rule.notify if rule.notify is not None else rule.action == "deny"
    autostart = rule.autostart if rule.autostart is not None else True
    if rule.action == "deny":
        return Decision("deny", f"denied by {rule.where()}", rule=rule, notify=notify)
    if rule.action == "allow":
        resolved, error = _resolve(rule, target, source, system)
        if error:
            return Decision("deny", f"{rule.where()}: {error}", rule=rule, notify=True)
        return Decision("allow", f"allowed by {rule.where()}", rule=rule, target=resolved,
                        user=rule.user, notify=notify, autostart=autostart)
    return _ask(rule, target, source, system, notify, autostart)


def _valid_request_target(target: str, system: SystemInfo) -> bool:
    if target in (ADMINVM, DEFAULT, DISPVM):
        return True
    if target.startswith(DISPVM_PREFIX):
        info = system.domain(target[len(DISPVM_PREFIX):])
        return info is not None and info.template_for_dispvms
    return system.domain(target) is not None


def _concrete(value: str, source: DomainInfo, system: SystemInfo) -> tuple[str | None, str]:
    """A target keyword made concrete: ``@adminvm`` is dom0, ``@dispvm`` the default."""
    if value == ADMINVM:
        return "dom0", ""
    if value == DEFAULT:
        return None, "the call names no target and the rule gives no target="
    if value == DISPVM:
        if source.default_dispvm is None:
            return None, f"{source.name} has no default_dispvm"
        value = DISPVM_PREFIX + source.default_dispvm
    if value.startswith(DISPVM_PREFIX):
        info = system.domain(value[len(DISPVM_PREFIX):])
        if info is None or not info.template_for_dispvms:
            return None, f"{value[len(DISPVM_PREFIX):]} is not a template for DispVMs"
        return value, ""
    if system.domain(value) is None:
        return None, f"target {value!r} does not exist"
    return value, ""


def _resolve(rule: Rule, target: str, source: DomainInfo, system: SystemInfo
             ) -> tuple[str | None, str]:
    if rule.redirect is not None:
        text = ADMINVM if isinstance(rule.redirect, AdminVM) else rule.redirect.text
        return _concrete(text, source, system)
    return _concrete(target, source, system)


def _ask(rule: Rule, target: str, source: DomainInfo, system: SystemInfo, notify: bool,
         autostart: bool) -> Decision:
    if rule.redirect is not None:
        resolved, error = _resolve(rule, target, source, system)
        if error:
            return Decision("deny", f"{rule.where()}: {error}", rule=rule, notify=True)
        choices = [resolved] if resolved else []
    else:
        choices = [name for name in rule.target.expand(system, source)
                   if name != source.name]
        choices = [("dom0" if name == ADMINVM else name) for name in choices]
    default = None
    if rule.default_target is not None:
        default, _ = _concrete(
            ADMINVM if isinstance(rule.default_target, AdminVM) else rule.default_target.text,
            source, system)
    elif target not in (DEFAULT, DISPVM):
        default, _ = _concrete(target, source, system)
    if default is not None and default not in choices:
        default = None
    if not choices:
        return Decision("deny", f"{rule.where()}: ask with no possible target", rule=rule,
                        notify=True)
    return Decision("ask", f"asks the user ({rule.where()})", rule=rule, user=rule.user,
                    notify=notify, autostart=autostart, targets_for_ask=choices,
                    default_target=default)
