"""Qube specifications in policy rules: ``@anyvm``, ``@tag:T``, names, ...

A token is parsed once, when the policy is loaded, into an object that knows
where it may stand (source, target column, ``target=`` parameter) and how it
matches a request. Requests name qubes by name or by one of the keywords
``@adminvm``, ``@default``, ``@dispvm`` and ``@dispvm:VM``; dom0 may also be
spelled ``dom0`` and is normalised to ``@adminvm`` first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
CLASS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

ADMINVM = "@adminvm"
DEFAULT = "@default"
DISPVM = "@dispvm"
DISPVM_PREFIX = "@dispvm:"


class PolicyTokenError(ValueError):
    """A token that is not valid where it stands; the parser adds file and line."""


@dataclass(frozen=True)
class DomainInfo:
    """What the policy needs to know of one qube."""

    name: str
    klass: str
    tags: frozenset[str] = frozenset()
    default_dispvm: str | None = None
    template_for_dispvms: bool = False
    dispvm_template: str | None = None  # for a DispVM: the AppVM it was made from


class SystemInfo(Protocol):
    """The qubes a policy is evaluated against (the model, or a fixed table)."""

    def domain(self, name: str) -> DomainInfo | None: ...

    def names(self) -> list[str]: ...


def normalise_target(value: str) -> str:
    """A requested target as the policy sees it (``dom0`` and ``""`` are keywords)."""
    if value in ("", "@default", "$default"):
        return DEFAULT
    if value in ("dom0", "@adminvm", "$adminvm"):
        return ADMINVM
    if value.startswith("$dispvm"):
        value = "@" + value[1:]
    return value


def normalise_source(value: str) -> str:
    """A calling qube as the policy sees it: ``dom0`` becomes ``@adminvm``."""
    return ADMINVM if value in ("dom0", "@adminvm") else value


def _domain(system: SystemInfo, value: str) -> DomainInfo | None:
    """The qube a plain name (or ``@adminvm``) stands for, if it exists."""
    if value == ADMINVM:
        return system.domain("dom0")
    if value.startswith("@"):
        return None
    return system.domain(value)


class Token:
    """One qube specification."""

    text: str
    in_source = True
    in_target = True
    in_redirect = False

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.text}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.text == self.text

    def __hash__(self) -> int:
        return hash((type(self), self.text))

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        """Does the requested (normalised) ``value`` fall under this token?"""
        raise NotImplementedError

    def expand(self, system: SystemInfo, source: DomainInfo | None) -> list[str]:
        """The concrete targets this token covers (offered when a rule asks)."""
        return [name for name in system.names()
                if name != "dom0" and self.match(name, system, source)]


class Name(Token):
    """A qube named literally; may also stand in ``target=`` and ``default_target=``."""

    in_redirect = True

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        return value == self.text


class AdminVM(Token):
    """``@adminvm`` (or ``dom0``): the admin qube, which ``@anyvm`` never covers."""

    in_redirect = True

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        return value == ADMINVM

    def expand(self, system: SystemInfo, source: DomainInfo | None) -> list[str]:
        return [ADMINVM]


class AnyVM(Token):
    """Every qube but dom0; as a target also ``@default`` and the DispVM keywords."""

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        if value == ADMINVM:
            return False
        if value in (DEFAULT, DISPVM):
            return True
        if value.startswith(DISPVM_PREFIX):
            info = system.domain(value[len(DISPVM_PREFIX):])
            return info is not None and info.template_for_dispvms
        return system.domain(value) is not None

    def expand(self, system: SystemInfo, source: DomainInfo | None) -> list[str]:
        names = super().expand(system, source)
        dispvms = [DISPVM_PREFIX + name for name in names
                   if (info := system.domain(name)) is not None and info.template_for_dispvms]
        return names + dispvms


class Default(Token):
    """``@default``: the caller named no target; target column only, never offered as a choice."""

    in_source = False

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        return value == DEFAULT

    def expand(self, system: SystemInfo, source: DomainInfo | None) -> list[str]:
        return []


class DispVM(Token):
    """A new DispVM of the caller's ``default_dispvm``."""

    in_source = False
    in_redirect = True

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        if value == DISPVM:
            return True
        default = source.default_dispvm if source is not None else None
        return default is not None and value == DISPVM_PREFIX + default

    def expand(self, system: SystemInfo, source: DomainInfo | None) -> list[str]:
        return [DISPVM]


class DispVMTemplate(Token):
    """``@dispvm:VM``: a new DispVM of VM (as a source: any DispVM made from VM)."""

    in_redirect = True

    def __init__(self, text: str):
        super().__init__(text)
        self.template = text[len(DISPVM_PREFIX):]

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        if value == self.text:
            return True
        if value == DISPVM:
            return source is not None and source.default_dispvm == self.template
        return False

    def match_source(self, value: str, system: SystemInfo) -> bool:
        info = _domain(system, value)
        return info is not None and info.dispvm_template == self.template

    def expand(self, system: SystemInfo, source: DomainInfo | None) -> list[str]:
        info = system.domain(self.template)
        return [self.text] if info is not None and info.template_for_dispvms else []


class DispVMTag(Token):
    """``@dispvm:@tag:T``: a new DispVM of any DispVM template tagged T."""

    def __init__(self, text: str):
        super().__init__(text)
        self.tag = text[len(DISPVM_PREFIX) + len("@tag:"):]

    def _template_ok(self, name: str, system: SystemInfo) -> bool:
        info = system.domain(name)
        return info is not None and info.template_for_dispvms and self.tag in info.tags

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        if not value.startswith(DISPVM_PREFIX):
            return False
        return self._template_ok(value[len(DISPVM_PREFIX):], system)

    def match_source(self, value: str, system: SystemInfo) -> bool:
        info = _domain(system, value)
        if info is None or info.dispvm_template is None:
            return False
        template = system.domain(info.dispvm_template)
        return template is not None and self.tag in template.tags

    def expand(self, system: SystemInfo, source: DomainInfo | None) -> list[str]:
        return [DISPVM_PREFIX + name for name in system.names()
                if self._template_ok(name, system)]


class Tag(Token):
    """``@tag:T``: every qube carrying tag T (dom0 too, when tagged)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.tag = text[len("@tag:"):]

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        info = _domain(system, value)
        return info is not None and self.tag in info.tags


class Type(Token):
    """``@type:CLASS``: every qube of that VM class (AppVM, TemplateVM, ...)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.klass = text[len("@type:"):]

    def match(self, value: str, system: SystemInfo, source: DomainInfo | None) -> bool:
        info = _domain(system, value)
        return info is not None and info.klass == self.klass


def match_source(token: Token, source: str, system: SystemInfo) -> bool:
    """Does a rule's source token cover the calling qube (a name or ``@adminvm``)?"""
    if isinstance(token, (DispVMTemplate, DispVMTag)):
        return token.match_source(source, system)
    return token.match(source, system, None)


def parse_token(text: str, where: str) -> Token:
    """Parse a qube specification standing in ``where`` (source, target, target=, ...).

    ``$``-spelled tokens of the older format are accepted as their ``@`` forms.
    """
    original = text
    if text.startswith("$"):
        text = "@" + text[1:]
        text = text.replace(":$tag:", ":@tag:")
    token = _classify(text, original, where)
    allowed = {"source": token.in_source, "target": token.in_target,
               "redirect": token.in_redirect,
               "default_target": token.in_redirect}[where]
    if not allowed:
        raise PolicyTokenError(f"{original!r} is not allowed as {_WHERE[where]}")
    return token


_WHERE = {"source": "the source", "target": "the target", "redirect": "target=",
          "default_target": "default_target="}


def _classify(text: str, original: str, where: str) -> Token:
    if text in ("dom0", ADMINVM):
        return AdminVM(text)
    if text == "@anyvm":
        return AnyVM(text)
    if text == DEFAULT:
        return Default(text)
    if text == DISPVM:
        return DispVM(text)
    if text.startswith(DISPVM_PREFIX + "@tag:"):
        tag = text[len(DISPVM_PREFIX) + len("@tag:"):]
        if not TAG_RE.fullmatch(tag):
            raise PolicyTokenError(f"invalid tag in {original!r}")
        return DispVMTag(text)
    if text.startswith(DISPVM_PREFIX):
        name = text[len(DISPVM_PREFIX):]
        if not NAME_RE.fullmatch(name) or name == "dom0":
            raise PolicyTokenError(f"invalid qube name in {original!r}")
        return DispVMTemplate(text)
    if text.startswith("@tag:"):
        if not TAG_RE.fullmatch(text[len("@tag:"):]):
            raise PolicyTokenError(f"invalid tag in {original!r}")
        return Tag(text)
    if text.startswith("@type:"):
        if not CLASS_RE.fullmatch(text[len("@type:"):]):
            raise PolicyTokenError(f"invalid class in {original!r}")
        return Type(text)
    if text.startswith("@"):
        raise PolicyTokenError(f"unknown token {original!r}")
    if not NAME_RE.fullmatch(text):
        raise PolicyTokenError(f"invalid qube name {original!r}")
    return Name(text)
