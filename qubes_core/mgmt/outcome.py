"""What one management step changed (or, in test mode, would change).

``changes`` is Salt's shape, ``{key: {"old": ..., "new": ...}}`` with plain
values (see :mod:`qubes_core.mgmt.values`), so an unchanged system gives an
empty dict; ``comments`` are the lines a user reads. A step that finds nothing
to do returns an empty outcome with a comment saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """Changes and comment lines of one step."""

    changes: dict[str, Any] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)

    def change(self, key: str, old: Any, new: Any) -> None:
        self.changes[key] = {"old": old, "new": new}

    def note(self, line: str) -> None:
        self.comments.append(line)

    def extend(self, other: Outcome) -> Outcome:
        self.changes.update(other.changes)
        self.comments.extend(other.comments)
        return self

    @property
    def comment(self) -> str:
        return "\n".join(self.comments)


class CheckStatus(dict):
    """The answer of ``qvm.check`` / ``qvm.state``: a dict (so it travels as Salt data)
    that formulas can also ask ``.passed()`` / ``.failed()``, as Qubes' formulas do::

        {% if salt['qvm.check']('work', 'missing').passed() %}
    """

    def __init__(self, passed: bool, comment: str, **extra: Any):
        super().__init__(result=bool(passed), retcode=0 if passed else 1, comment=comment,
                         **extra)

    def passed(self) -> bool:
        return bool(self["result"])

    def failed(self) -> bool:
        return not self["result"]

    def __bool__(self) -> bool:
        return self.passed()
