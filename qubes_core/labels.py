"""Labels: the coloured borders that tell VMs apart at a glance."""

from __future__ import annotations

import re
from dataclasses import dataclass

from qubes_core import exc

DEFAULT_LABELS: tuple[tuple[int, str, str], ...] = (
    (1, "0xcc0000", "red"),
    (2, "0xf57900", "orange"),
    (3, "0xedd400", "yellow"),
    (4, "0x73d216", "green"),
    (5, "0x555555", "gray"),
    (6, "0x3465a4", "blue"),
    (7, "0x75507b", "purple"),
    (8, "0x000000", "black"),
)

LABEL_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,31}$")
COLOR_RE = re.compile(r"^0x[0-9a-fA-F]{6}$")
# Names that mean something else where labels are named: in policies, the API and
# the tools (``none`` is how the API writes "no value"; ``dom0`` is a VM).
RESERVED_LABEL_NAMES = frozenset({"dom0", "none", "default", "adminvm"})
# Colours Qubes changes at load: gray was 0x555753 (nearly green) before R4.1.
LABEL_COLOR_MIGRATIONS = {"0x555753": "0x555555"}


@dataclass(eq=False)
class Label:
    """One label: index (``label-N`` in qubes.xml), colour and name; compared by identity."""

    index: int
    color: str
    name: str

    @property
    def icon(self) -> str:
        return "appvm-" + self.name

    @property
    def xml_id(self) -> str:
        return f"label-{self.index}"

    def __str__(self) -> str:
        return self.name


def validate_label(name: str, color: str) -> None:
    """Refuse label names and colours that qubes.xml or a GUI could not take."""
    if not isinstance(name, str) or not LABEL_NAME_RE.match(name):
        raise exc.QubesValueError(
            f"invalid label name {name!r}: a letter, then up to 31 letters, digits, '_' or '-'"
        )
    if name.lower() in RESERVED_LABEL_NAMES:
        raise exc.QubesValueError(f"invalid label name {name!r}: the name is reserved")
    if not isinstance(color, str) or not COLOR_RE.match(color):
        raise exc.QubesValueError(f"invalid label colour {color!r}: expected 0xRRGGBB")


def default_labels() -> dict[int, Label]:
    """The eight labels of a new installation (red to black), keyed by index."""
    return {index: Label(index, color, name) for index, color, name in DEFAULT_LABELS}
