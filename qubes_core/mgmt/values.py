"""Values as a management front end compares and reports them.

Salt hands over whatever YAML or the command line produced (``"1"``, ``1``,
``True``, ``"true"``, ``None``, ``[]``); qubesd answers typed values. Every
comparison goes through :func:`coerce` (the wanted value in the property's own
type) and :func:`plain` (the current value as a plain Python value), so that a
state applied twice reports no change the second time: ``"1"`` and ``1`` for an
int, ``"True"`` and ``True`` for a bool, ``""``/``None``/``"none"`` for no VM
are each one value. Property names may use dashes or underscores, and the
reference's aliases (``dispvm-allowed``, ``last-backup``) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qubes_core.client.app import PropertyValues, Qubes, unescape_line_value
from qubes_core.mgmt.errors import UsageError

DEFAULT = "*default*"

ALIASES = {
    "dispvm_allowed": "template_for_dispvms",
    "last_backup": "backup_timestamp",
}

TRUE_WORDS = frozenset({"true", "1", "yes", "on", "y"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", "n", ""})
NONE_WORDS = frozenset({"", "none"})


@dataclass(frozen=True)
class Property:
    """One property of a VM as ``GetAll`` reports it."""

    name: str
    kind: str  # vm | int | bool | label | str
    is_default: bool
    value: Any  # plain: a VM or label as its name

    @property
    def shown(self) -> Any:
        """The value as reported in changes: ``*default*`` while it follows its default."""
        return DEFAULT if self.is_default else self.value


def property_name(key: str) -> str:
    """``provides-network`` -> ``provides_network``; the reference's aliases resolved."""
    name = str(key).replace("-", "_")
    return ALIASES.get(name, name)


def plain(value: Any) -> Any:
    """A client value as plain data: VMs and labels by name."""
    if value is None or isinstance(value, bool | int):
        return value
    name = getattr(value, "name", None)
    if name is not None and not isinstance(value, str | bytes):
        return str(name)
    return str(value) if isinstance(value, str) else value


def parse_bool(value: Any, what: str = "value") -> bool:
    """A boolean from YAML or command-line text; anything else is a usage error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS and value is not None:
        return False
    raise UsageError(f"{what}: expected true or false, got {value!r}")


def coerce(kind: str, value: Any, what: str) -> Any:
    """``value`` in the property's type (``kind`` from the API), or a usage error."""
    if kind == "vm":
        text = plain(value)
        if text is None or str(text).strip().lower() in NONE_WORDS:
            return None
        return str(text)
    if kind == "int":
        if isinstance(value, bool):
            raise UsageError(f"{what}: expected an integer, got {value!r}")
        try:
            return int(str(value).strip())
        except (TypeError, ValueError):
            raise UsageError(f"{what}: expected an integer, got {value!r}") from None
    if kind == "bool":
        return parse_bool(value, what)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if not isinstance(value, str | int | float):
        raise UsageError(f"{what}: expected a single value, got {type(value).__name__}")
    return str(plain(value))


def same(current: Property, wanted: Any) -> bool:
    """Whether the property already holds ``wanted`` (already coerced), not by default."""
    if current.is_default:
        return False
    if current.kind == "str":
        return (current.value or "") == (wanted or "")
    return current.value == wanted


def wire(value: Any) -> str:
    """A coerced value as ``property.Set`` takes it."""
    if value is None:
        return ""
    return str(value)


def parse_get_all(app: Qubes, text: str) -> dict[str, Property]:
    """The body of ``property.GetAll`` as :class:`Property` records."""
    found = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        default_part, type_part, raw = (rest.split(" ", 2) + ["", ""])[:3]
        kind = type_part[len("type="):]
        value = PropertyValues.convert(app, kind, unescape_line_value(raw))
        found[name] = Property(name, kind, default_part == "default=True", plain(value))
    return found


def feature_value(value: Any) -> str:
    """A feature value as qubesd stores it: ``True`` is ``"1"``, ``False``/None ``""``."""
    if value is True:
        return "1"
    if value is False or value is None:
        return ""
    if isinstance(value, int | float | str):
        return str(value)
    raise UsageError(f"feature values are single values, got {type(value).__name__}")


def as_list(value: Any, what: str) -> list[str]:
    """A list of names from YAML (a list, one name, or a comma-separated string)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple | set):
        return [str(plain(item)) for item in value]
    raise UsageError(f"{what}: expected a list of names, got {value!r}")
