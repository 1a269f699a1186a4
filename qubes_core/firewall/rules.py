"""Firewall rules: validation of every field and the API text form.

A rule is immutable and always valid: every constructor path (API text,
firewall.xml, keyword arguments) goes through the same field parsers, which
refuse anything they do not fully understand and say which field was wrong.

Text forms (see FACTS: Firewall):

- API form (``admin.vm.firewall.Get/Set``): ``key=value`` separated by spaces,
  ``dsthost=`` for any destination, ``expire`` and ``comment`` included and
  ``comment`` last (it may hold spaces).
- QubesDB form (what the netvm's firewall agent reads): the destination as
  ``dst4=``/``dst6=`` for addresses or ``dsthost=`` for host names; no
  ``expire`` (expired rules are never exported) and no ``comment``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from typing import Any

from qubes_core import exc

ACTIONS = ("accept", "drop")
PROTOCOLS = ("tcp", "udp", "icmp")
SPECIAL_TARGETS = ("dns",)

#: Field order of the text forms; ``comment`` must stay last.
FIELDS = ("action", "proto", "dsthost", "dstports", "icmptype", "specialtarget", "expire",
          "comment")
#: Keys accepted in the API and QubesDB forms besides the field names.
DSTHOST_ALIASES = {"dst4": 4, "dst6": 6}

MAX_COMMENT = 256
#: Letters, digits, space and punctuation that means nothing to a shell, XML or the
#: rule syntax beyond text: no quotes, backslashes, ``$``, ``<>``, ``&``, ``|`` or
#: control characters.
COMMENT_RE = re.compile(r"^[A-Za-z0-9 _.,:;!?()\[\]@#%+=/*'-]*$")
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
DIGITS_RE = re.compile(r"^[0-9]{1,12}$")
PORTS_RE = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")
#: Latest accepted expiry: the last second of year 9999.
MAX_EXPIRE = 253402300799


class RuleError(exc.QubesValueError):
    """A rule, or one of its fields, is invalid; ``field`` names the culprit."""

    def __init__(self, field: str | None, problem: str, where: str = ""):
        self.field = field
        self.problem = problem
        self.where = where
        text = f"{field}: {problem}" if field else problem
        super().__init__(f"{where}: {text}" if where else text)

    def located(self, where: str) -> RuleError:
        """The same error, prefixed with where the rule came from (``rule 3``)."""
        return RuleError(self.field, self.problem, where)


# --- field parsers: raw text (or an already parsed value) -> canonical value ----------


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RuleError(field, f"expected text, got {type(value).__name__}")
    if not value:
        raise RuleError(field, "empty value")
    return value


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    text = _text(field, value)
    if text not in choices:
        raise RuleError(field, f"{text!r} is not one of {', '.join(choices)}")
    return text


def _number(field: str, value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool):
        raise RuleError(field, f"{value!r} is not {what}")
    if isinstance(value, int):
        number = value
    else:
        text = _text(field, value)
        if not DIGITS_RE.fullmatch(text):
            raise RuleError(field, f"{text!r} is not {what}")
        number = int(text)
    if not low <= number <= high:
        raise RuleError(field, f"{number} is not {what} ({low}-{high})")
    return number


ADDRESS_CHARS_RE = re.compile(r"[0-9A-Fa-f:./]+", re.ASCII)


def parse_dsthost(value: Any, family: int | None = None, field: str = "dsthost") -> str:
    """An IPv4/IPv6 network (``/32``, ``/128`` when no prefix) or a DNS host name."""
    text = _text(field, value)
    looks_like_address = ":" in text or "/" in text or re.fullmatch(r"[0-9./]+", text)
    if looks_like_address:
        # Only what an address or network is written with: no zone id (``%eth0``
        # names an interface of the machine that parses it), nothing else ipaddress
        # may take.
        if not ADDRESS_CHARS_RE.fullmatch(text):
            raise RuleError(field, f"{text!r} is not an IPv4 or IPv6 address or network")
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as err:
            if "host bits set" in str(err):
                fixed = ipaddress.ip_network(text, strict=False)
                raise RuleError(field, f"{text!r} has host bits set (did you mean {fixed}?)")
            raise RuleError(field, f"{text!r} is not an IPv4 or IPv6 address or network")
        if family is not None and network.version != family:
            raise RuleError(field, f"{text!r} is not an IPv{family} address")
        return str(network)
    if family is not None:
        raise RuleError(field, f"{text!r} is not an IPv{family} address")
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    if (len(name) > 253 or not all(HOST_LABEL_RE.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):
        raise RuleError(field, f"{text!r} is neither an IP address/network nor a host name "
                               "(letters, digits and '-' in dot-separated labels)")
    return name.lower()


def dsthost_kind(dsthost: str) -> str:
    """``dst4``, ``dst6`` or ``dsthost`` (a name): the key the QubesDB form uses."""
    if ":" in dsthost:
        return "dst6"
    if "/" in dsthost:
        return "dst4"
    return "dsthost"


def parse_dstports(value: Any) -> tuple[int, int]:
    """``N`` or ``N-M`` (ports 1-65535), as the range (low, high)."""
    if isinstance(value, tuple) and len(value) == 2:
        low, high = value
    else:
        text = _text("dstports", value)
        match = PORTS_RE.fullmatch(text)
        if not match:
            raise RuleError("dstports", f"{text!r} is not a port or port range (N or N-M)")
        low, high = match.group(1), match.group(2) or match.group(1)
    low = _number("dstports", low, 1, 65535, "a port")
    high = _number("dstports", high, 1, 65535, "a port")
    if low > high:
        raise RuleError("dstports", f"range {low}-{high} is empty (first port is larger)")
    return low, high


def parse_expire(value: Any, now: float | None = None) -> int:
    """Seconds since the epoch; ``+N`` means N seconds from ``now``."""
    if isinstance(value, str) and value.startswith("+"):
        if now is None:
            raise RuleError("expire", "a relative expiry (+N) needs the current time")
        delta = _number("expire", value[1:], 0, MAX_EXPIRE, "a number of seconds")
        value = int(now) + delta
    return _number("expire", value, 0, MAX_EXPIRE, "a time in seconds since the epoch")


def parse_comment(value: Any) -> str:
    """A rule's comment, refused unless it is at most 256 characters of a plain charset
    (the error names the characters that are not allowed).
    """
    if not isinstance(value, str):
        raise RuleError("comment", f"expected text, got {type(value).__name__}")
    if len(value) > MAX_COMMENT:
        raise RuleError("comment", f"longer than {MAX_COMMENT} characters")
    if not COMMENT_RE.fullmatch(value):
        bad = sorted({char for char in value if not COMMENT_RE.fullmatch(char)})
        raise RuleError("comment", f"characters not allowed: {''.join(bad)!r} (letters, "
                                   "digits, space and _.,:;!?()[]@#%+=/*'- are)")
    return value


@dataclasses.dataclass(frozen=True)
class Rule:
    """One firewall rule, validated and in canonical form."""

    action: str
    proto: str | None = None
    dsthost: str | None = None
    dstports: tuple[int, int] | None = None
    icmptype: int | None = None
    specialtarget: str | None = None
    expire: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        canon = {
            "action": _choice("action", self.action, ACTIONS),
            "proto": None if self.proto is None else _choice("proto", self.proto, PROTOCOLS),
            "dsthost": None if self.dsthost is None else parse_dsthost(self.dsthost),
            "dstports": None if self.dstports is None else parse_dstports(self.dstports),
            "icmptype": None if self.icmptype is None else _number(
                "icmptype", self.icmptype, 0, 255, "an ICMP type"),
            "specialtarget": None if self.specialtarget is None else _choice(
                "specialtarget", self.specialtarget, SPECIAL_TARGETS),
            "expire": None if self.expire is None else parse_expire(self.expire),
            "comment": parse_comment(self.comment) or None if self.comment is not None else None,
        }
        for name, value in canon.items():
            object.__setattr__(self, name, value)
        if self.dstports is not None and self.proto not in ("tcp", "udp"):
            raise RuleError("dstports", "only valid with proto=tcp or proto=udp")
        if self.icmptype is not None and self.proto != "icmp":
            raise RuleError("icmptype", "only valid with proto=icmp")
        if self.specialtarget is not None and self.dsthost is not None:
            raise RuleError("specialtarget", "cannot be combined with dsthost")

    # --- text forms -------------------------------------------------------

    def field_text(self, name: str) -> str | None:
        """The text of one field as firewall.xml and the API write it; None if unset."""
        value = getattr(self, name)
        if value is None:
            return None
        if name == "dstports":
            return f"{value[0]}-{value[1]}"
        return str(value)

    def api_text(self) -> str:
        """The API form: every set field, ``comment`` last."""
        return self._api_text

    def qdb_text(self) -> str:
        """The QubesDB form read by the netvm: no expire, no comment."""
        return self._qdb_text

    # Rules are immutable: each text form is built once, on first use.
    @functools.cached_property
    def _api_text(self) -> str:
        return " ".join(f"{name}={text}" for name in FIELDS
                        if (text := self.field_text(name)) is not None)

    @functools.cached_property
    def _qdb_text(self) -> str:
        parts = []
        for name in FIELDS[:-2]:
            text = self.field_text(name)
            if text is None:
                continue
            key = dsthost_kind(text) if name == "dsthost" else name
            parts.append(f"{key}={text}")
        return " ".join(parts)

    @property
    def address_family(self) -> int | None:
        """4 or 6 when the destination is an address, else None (any family)."""
        if self.dsthost is None:
            return None
        kind = dsthost_kind(self.dsthost)
        return {"dst4": 4, "dst6": 6}.get(kind)

    def is_expired(self, now: float) -> bool:
        """Whether the rule's ``expire`` is at or before ``now``."""
        return self.expire is not None and self.expire <= now

    # --- parsing ----------------------------------------------------------

    @classmethod
    def from_fields(cls, fields: dict[str, str], now: float | None = None) -> Rule:
        """A rule from field texts (firewall.xml properties, parsed API text)."""
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise RuleError(unknown[0], "unknown rule field")
        if "action" not in fields:
            raise RuleError("action", "missing (every rule needs action=accept or drop)")
        values: dict[str, Any] = dict(fields)
        if "expire" in values:
            values["expire"] = parse_expire(values["expire"], now)
        return cls(**values)

    @classmethod
    def from_api(cls, untrusted_line: str, now: float | None = None) -> Rule:
        """Parse one line of the API form; ``now`` resolves ``expire=+N``."""
        if not isinstance(untrusted_line, str):
            raise RuleError(None, "a rule must be text")
        if not (untrusted_line.isascii() and untrusted_line.isprintable()):
            raise RuleError(None, "a rule may only hold printable ASCII characters")
        line, sep, comment = untrusted_line.partition("comment=")
        if sep and line and not line.endswith(" "):
            raise RuleError("comment", "must be a separate option, after a space")
        fields: dict[str, str] = {}
        for option in line.split():
            key, eq, value = option.partition("=")
            if not eq:
                raise RuleError(None, f"{option!r} is not key=value")
            family = DSTHOST_ALIASES.get(key)
            name = "dsthost" if family else key
            if name not in FIELDS:
                raise RuleError(key, "unknown rule field")
            if name in fields:
                raise RuleError(name, "given more than once")
            fields[name] = parse_dsthost(value, family, key) if family else value
        if sep:
            fields["comment"] = comment
        return cls.from_fields(fields, now)


def parse_api_rules(untrusted_text: str, now: float | None = None) -> list[Rule]:
    """Every line of an API payload (one rule a line); the first error names its line."""
    lines = untrusted_text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last rule
    rules = []
    for number, line in enumerate(lines, start=1):
        try:
            rules.append(Rule.from_api(line, now))
        except RuleError as err:
            raise err.located(f"rule {number}") from None
    return rules


POLICY = "drop"


def default_rules() -> list[Rule]:
    """What a VM without firewall.xml has: everything allowed (policy drop + accept)."""
    return [Rule(action="accept")]
