"""A VM's firewall rules as a wanted list, with expiring rules that converge.

Rules are given as mappings (``{action: accept, dsthost: example.com, proto:
tcp, dstports: 443}``) or in the API text form, and compared in the canonical
text qubesd itself writes, so ``dstports: 443`` and ``dstports=443-443`` are
one rule. A rule with a relative expiry (``expire: +3600``) is satisfied by an
existing rule that is the same apart from its expiry and has not expired yet:
applying the state again does not push the expiry forward each run, which
would make it report a change every time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from qubes_core.client.app import Qubes
from qubes_core.firewall.rules import Rule, RuleError
from qubes_core.mgmt.errors import UsageError
from qubes_core.mgmt.outcome import Outcome


def read_rules(app: Qubes, name: str) -> list[str]:
    """The VM's rules in API text form, in order."""
    return [line for line in app.call("admin.vm.firewall.Get", name).splitlines() if line]


def _parse(rule: Any, now: float, number: int) -> tuple[Rule, bool]:
    """(canonical rule, whether its expiry was relative)."""
    try:
        if isinstance(rule, str):
            relative = " expire=+" in f" {rule}"
            return Rule.from_api(rule, now), relative
        if isinstance(rule, Mapping):
            fields = {str(k): str(v) for k, v in rule.items() if v is not None}
            relative = fields.get("expire", "").startswith("+")
            return Rule.from_fields(fields, now), relative
    except RuleError as error:
        raise UsageError(f"firewall rule {number}: {error}") from None
    raise UsageError(f"firewall rule {number}: expected a mapping or a text rule, "
                     f"got {type(rule).__name__}")


def _without_expire(rule: Rule) -> str:
    return " ".join(part for part in rule.api_text().split(" ")
                    if not part.startswith("expire="))


def wanted_texts(current: list[str], rules: Iterable[Any], now: float) -> list[str]:
    """The rule texts to have: a relative expiry keeps a matching live rule as it is."""
    live: dict[str, str] = {}
    for line in current:
        try:
            rule = Rule.from_api(line, now)
        except RuleError:
            continue
        if rule.expire is not None and rule.expire > now:
            live.setdefault(_without_expire(rule), line)
    texts = []
    for number, raw in enumerate(rules, 1):
        rule, relative = _parse(raw, now, number)
        if relative and _without_expire(rule) in live:
            texts.append(live[_without_expire(rule)])
        else:
            texts.append(rule.api_text())
    return texts


def set_rules(app: Qubes, name: str, rules: Iterable[Any], test: bool = False,
              now: float | None = None) -> Outcome:
    """Replace the VM's rules by ``rules`` (all checked first); one change if they differ."""
    now = time.time() if now is None else now
    current = read_rules(app, name)
    texts = wanted_texts(current, list(rules), now)
    outcome = Outcome()
    if texts == current:
        outcome.note(f"[SKIP] firewall of {name}: {len(current)} rule(s) already in place")
        return outcome
    if not test:
        app.call("admin.vm.firewall.Set", name, payload="".join(t + "\n" for t in texts))
    outcome.change("rules", current, texts)
    outcome.note(f"firewall of {name}: {len(current)} rule(s) -> {len(texts)} rule(s)")
    return outcome
