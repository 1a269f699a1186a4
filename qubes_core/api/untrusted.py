"""Checks of what a caller sends (arguments and payloads are untrusted).

Every value that may end up in qubes.xml goes through :func:`decode_text`:
XML cannot hold control characters, so a value with one would make every later
save fail. The errors name what was wrong.
"""

from __future__ import annotations

import re

from qubes_core import exc

# C0 controls, DEL, and the code points XML 1.0 forbids.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f\ufffe\uffff]")
KEY_RE = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")


def decode_text(raw: bytes, what: str, *, ascii_only: bool = False,
                max_length: int = 65536) -> str:
    """``raw`` as text without control characters, or QubesValueError naming ``what``."""
    if len(raw) > max_length:
        raise exc.QubesValueError(f"{what} is longer than {max_length} bytes")
    try:
        text = raw.decode("ascii" if ascii_only else "utf-8")
    except UnicodeDecodeError:
        encoding = "ASCII" if ascii_only else "UTF-8"
        raise exc.QubesValueError(f"{what} is not valid {encoding}") from None
    match = _FORBIDDEN.search(text)
    if match:
        raise exc.QubesValueError(
            f"{what} holds the control character {match.group()!r} at offset {match.start()}"
        )
    return text


def parse_key_values(text: str, what: str, allowed: set[str] | None = None,
                     prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """``key=value key2=value2`` (space-separated) into a dict; no key twice."""
    result: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not KEY_RE.match(key):
            raise exc.QubesValueError(f"{what}: expected key=value, got {item!r}")
        if allowed is not None and key not in allowed and not key.startswith(prefixes):
            names = ", ".join(sorted(allowed) + [p + "NAME" for p in prefixes])
            raise exc.QubesValueError(f"{what}: unknown key {key!r} (allowed: {names})")
        if key in result:
            raise exc.QubesValueError(f"{what}: key {key!r} given twice")
        result[key] = value
    return result


def escape_line_value(text: str) -> str:
    """One-line form of a value (``GetAll``): backslash doubled, newline as ``\\n``."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")
