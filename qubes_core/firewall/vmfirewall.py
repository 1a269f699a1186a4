"""The firewall of one VM: its rules in force, kept in ``DIR/firewall.xml``.

An expired rule is never in force: it is left out of :attr:`Firewall.rules`
and of the export as soon as the clock passes it, dropped when the file is
read and when it is written. Removing it from the file at the right time is
the expiry schedule's job (:mod:`qubes_core.firewall.expiry`).

A firewall.xml that cannot be read does not open the firewall: its VM exports
the drop policy with no rule until the file is fixed or replaced by ``Set``.

In qubesd the file is read and written in a worker thread (the ``*_async``
methods), one write at a time per VM, so the event loop never waits for the
disk; the synchronous methods are for callers without a loop.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from qubes_core.firewall.clock import clock_of
from qubes_core.firewall.rules import POLICY, Rule, RuleError, default_rules
from qubes_core.firewall.xmlfile import FILE_NAME, FirewallFileError, parse, serialize, write_atomic

if TYPE_CHECKING:
    from qubes_core.vm.base import BaseVM
    from qubes_core.vm.qubesvm import QubesVM

log = logging.getLogger("qubes.firewall")

#: QubesDB rule keys are four digits (0000-9999), read by the agent in sorted order.
MAX_RULES = 10000


class Firewall:
    """Rules of one VM; loaded from its firewall.xml on first use."""

    def __init__(self, vm: QubesVM):
        self.vm = vm
        self._rules: list[Rule] | None = None
        self._load_error: FirewallFileError | None = None
        # The file still holds rules that expired (dropped in memory when read).
        self._file_has_expired = False
        self._write_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"<Firewall of {self.vm}>"

    @property
    def path(self) -> Path | None:
        """``DIR/firewall.xml``; None when the app has no qubes.xml (nothing is stored)."""
        if self.vm.app.store is None:
            return None
        path: Path = self.vm.dir_path / FILE_NAME
        return path

    def now(self) -> float:
        """The app's wall clock now (expiry is decided by it)."""
        return clock_of(self.vm.app).time()

    # --- reading ----------------------------------------------------------

    def load(self) -> None:
        """(Re)read firewall.xml; no file means the default rules."""
        self._rules, self._load_error, self._file_has_expired = None, None, False
        path = self.path
        if path is None or not path.exists():
            self._rules = default_rules()
            return
        try:
            rules = parse(path.read_bytes(), str(path))
        except OSError as err:
            self._load_error = FirewallFileError(f"{path}: cannot read: {err.strerror}")
        except FirewallFileError as err:
            self._load_error = err
        if self._load_error is not None:
            log.error("firewall of %s blocks all traffic: %s", self.vm, self._load_error)
            raise self._load_error
        now = self.now()
        self._rules = [rule for rule in rules if not rule.is_expired(now)]
        self._file_has_expired = len(self._rules) != len(rules)

    def _loaded(self) -> list[Rule]:
        if self._rules is None:
            if self._load_error is not None:
                raise self._load_error
            self.load()
        assert self._rules is not None
        return self._rules

    @property
    def rules(self) -> list[Rule]:
        """The rules in force now, in order (a copy)."""
        now = self.now()
        return [rule for rule in self._loaded() if not rule.is_expired(now)]

    @property
    def policy(self) -> str:
        """What happens to traffic no rule matches (always ``drop``, as in Qubes R4)."""
        return POLICY

    def has_file(self) -> bool:
        """Whether the VM has a firewall.xml (else it has the default rules)."""
        path = self.path
        return path is not None and path.exists()

    def nearest_expiry(self) -> int | None:
        """The soonest ``expire`` among the rules, expired ones included; None if none."""
        try:
            rules = self._loaded()
        except FirewallFileError:
            return None
        expiries = [rule.expire for rule in rules if rule.expire is not None]
        if self._file_has_expired:
            expiries.append(0)
        return min(expiries, default=None)

    # --- changing ---------------------------------------------------------

    @staticmethod
    def _checked(rules: list[Rule]) -> list[Rule]:
        rules = list(rules)
        if len(rules) > MAX_RULES:
            raise RuleError(None, f"{len(rules)} rules given; at most {MAX_RULES} are allowed")
        for number, rule in enumerate(rules, start=1):
            if not isinstance(rule, Rule):
                raise RuleError(None, f"rule {number} is not a Rule but {type(rule).__name__}")
        return rules

    def set_rules(self, rules: list[Rule]) -> None:
        """Replace every rule, write firewall.xml and re-export (``firewall-changed``)."""
        self._write(self._checked(rules))
        self._load_error = None
        self.vm.fire_event("firewall-changed")

    def _lock(self) -> asyncio.Lock:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    async def set_rules_async(self, rules: list[Rule]) -> None:
        """:meth:`set_rules`, the file written in a worker thread."""
        rules = self._checked(rules)
        async with self._lock():
            await self._write_async(rules)
        self._load_error = None
        self.vm.fire_event("firewall-changed")

    async def load_async(self) -> None:
        """Read firewall.xml in a worker thread unless it was read already (a file that
        did not read stays refused until reloaded)."""
        if self._rules is None and self._load_error is None:
            async with self._lock():
                if self._rules is None and self._load_error is None:
                    await asyncio.to_thread(self.load)

    async def reload_async(self) -> None:
        """:meth:`reload`, the file read in a worker thread."""
        try:
            async with self._lock():
                await asyncio.to_thread(self.load)
        finally:
            self.vm.fire_event("firewall-changed")

    async def drop_expired_async(self) -> list[Rule]:
        """:meth:`drop_expired`, the file written in a worker thread."""
        pending = self._expiry_pending()
        if pending is None:
            return []
        rules, gone = pending
        async with self._lock():
            await self._write_async(rules)
        self._log_expired(gone)
        self.vm.fire_event("firewall-changed")
        return gone

    def save(self) -> None:
        """Write the rules in force (expired ones dropped) to firewall.xml."""
        self._write(self._loaded())

    def _live(self, rules: list[Rule]) -> list[Rule]:
        now = self.now()
        return [rule for rule in rules if not rule.is_expired(now)]

    def _write_file(self, live: list[Rule], path: Path | None) -> None:
        if path is not None:
            write_atomic(path, serialize(live))
            log.info("wrote %d firewall rules of %s to %s", len(live), self.vm, path)

    def _write(self, rules: list[Rule]) -> None:
        live = self._live(rules)
        self._write_file(live, self.path)
        self._rules, self._file_has_expired = live, False

    async def _write_async(self, rules: list[Rule]) -> None:
        live = self._live(rules)
        await asyncio.to_thread(self._write_file, live, self.path)
        self._rules, self._file_has_expired = live, False

    def _expiry_pending(self) -> tuple[list[Rule], list[Rule]] | None:
        """The rules and those of them expired, when firewall.xml must be rewritten."""
        try:
            rules = self._loaded()
        except FirewallFileError:
            return None
        now = self.now()
        gone = [rule for rule in rules if rule.is_expired(now)]
        if not gone and not self._file_has_expired:
            return None
        return rules, gone

    def _log_expired(self, gone: list[Rule]) -> None:
        if gone:
            log.info("firewall of %s: %d rule(s) expired: %s", self.vm, len(gone),
                     "; ".join(rule.api_text() for rule in gone))

    def drop_expired(self) -> list[Rule]:
        """Remove expired rules from memory and firewall.xml; re-export if any went."""
        pending = self._expiry_pending()
        if pending is None:
            return []
        rules, gone = pending
        self._write(rules)
        self._log_expired(gone)
        self.vm.fire_event("firewall-changed")
        return gone

    def reload(self) -> None:
        """Read firewall.xml again and re-export (``admin.vm.firewall.Reload``)."""
        try:
            self.load()
        finally:
            self.vm.fire_event("firewall-changed")

    def clone_from(self, other: Firewall) -> None:
        """Take ``other``'s rules (a DispVM gets its AppVM's firewall)."""
        self.set_rules(other.rules)

    # --- forms ------------------------------------------------------------

    def api_text(self) -> str:
        """``admin.vm.firewall.Get``: one rule a line, each ended by a newline."""
        return "".join(rule.api_text() + "\n" for rule in self.rules)

    def qdb_entries(self, address_family: int | None = None) -> dict[str, str]:
        """Keys (relative to ``/qubes-firewall/IP/``) and values the netvm reads.

        Rules whose destination is an address of the other family are left out.
        A firewall.xml that cannot be read gives the policy alone: nothing passes.
        """
        entries = {"policy": self.policy}
        try:
            rules = self.rules
        except FirewallFileError:
            return entries
        number = 0
        for rule in rules:
            family = rule.address_family
            if address_family is not None and family is not None and family != address_family:
                continue
            entries[f"{number:04d}"] = rule.qdb_text()
            number += 1
        return entries


_firewalls: weakref.WeakKeyDictionary[QubesVM, Firewall] = weakref.WeakKeyDictionary()


def has_firewall(vm: BaseVM) -> TypeGuard[QubesVM]:
    """Whether ``vm`` can have a firewall: its class has a netvm (as every QubesVM)."""
    return vm.has_property("netvm")


def firewall_of(vm: QubesVM) -> Firewall:
    """The one :class:`Firewall` object of ``vm`` (made on first use)."""
    firewall = _firewalls.get(vm)
    if firewall is None:
        firewall = _firewalls[vm] = Firewall(vm)
    return firewall
