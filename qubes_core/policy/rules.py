"""One policy rule, and the parsing of the part of a line after the qubes.

Rules remember the file and line they came from, so that a decision can be
explained and an error can be found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qubes_core.policy.tokens import PolicyTokenError, Token, parse_token

SERVICE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
ARGUMENT_RE = re.compile(r"^[A-Za-z0-9_.+-]{0,255}$")
USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ACTIONS = ("allow", "deny", "ask")
YES_NO = {"yes": True, "no": False}


class PolicySyntaxError(Exception):
    """A policy file is wrong; names the file and the line."""

    def __init__(self, path: Path | str, lineno: int | None, msg: str):
        self.path = Path(path)
        self.lineno = lineno
        self.msg = msg
        where = f"{path}:{lineno}" if lineno else str(path)
        super().__init__(f"{where}: {msg}")


@dataclass(frozen=True)
class Rule:
    """``SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...]`` from ``path:lineno``.

    ``service`` and ``argument`` are None for ``*``; ``argument`` is the text
    after the ``+`` otherwise (``""`` for a bare ``+``).
    """

    service: str | None
    argument: str | None
    source: Token
    target: Token
    action: str
    redirect: Token | None = None
    user: str | None = None
    default_target: Token | None = None
    notify: bool | None = None
    autostart: bool | None = None
    path: Path = Path("-")
    lineno: int = 0
    text: str = ""

    def where(self) -> str:
        return f"{self.path}:{self.lineno}"

    def matches_call(self, service: str, argument: str) -> bool:
        return ((self.service is None or self.service == service)
                and (self.argument is None or self.argument == argument))


def check_service(service: str, argument: str) -> tuple[str | None, str | None]:
    """The (service, argument) columns of a rule or directive, as a Rule stores them."""
    if service == "*":
        if argument != "*":
            raise ValueError(f"service '*' needs argument '*', not {argument!r}")
        return None, None
    if not SERVICE_RE.fullmatch(service):
        raise ValueError(f"invalid service name {service!r}")
    if argument == "*":
        return service, None
    if not argument.startswith("+") or not ARGUMENT_RE.fullmatch(argument[1:]):
        raise ValueError(f"invalid argument {argument!r} (use '*', '+' or '+ARGUMENT')")
    return service, argument[1:]


def parse_action(words: list[str], *, commas: bool) -> dict[str, object]:
    """``ACTION [PARAM=VALUE ...]`` (older files: ``ACTION,PARAM=VALUE,...``)."""
    if commas:
        words = [part for word in words for part in word.split(",") if part]
    elif any("," in word for word in words):
        raise ValueError("parameters are separated by spaces, not commas, in this format")
    if not words:
        raise ValueError("missing action")
    action, params = words[0], words[1:]
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} (expected allow, deny or ask)")
    fields: dict[str, object] = {"action": action}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not value:
            raise ValueError(f"invalid parameter {param!r} (expected NAME=VALUE)")
        if key in fields:
            raise ValueError(f"parameter {key!r} given twice")
        fields[key] = _param(action, key, value)
    return fields


def _param(action: str, key: str, value: str) -> object:
    if key == "notify":
        if value not in YES_NO:
            raise ValueError(f"notify must be yes or no, not {value!r}")
        return YES_NO[value]
    if action == "deny":
        raise ValueError(f"parameter {key!r} is not allowed with deny")
    if key == "autostart":
        if value not in YES_NO:
            raise ValueError(f"autostart must be yes or no, not {value!r}")
        return YES_NO[value]
    if key == "user":
        if not USER_RE.fullmatch(value):
            raise ValueError(f"invalid user {value!r}")
        return value
    if key == "target":
        return parse_token(value, "redirect")
    if key == "default_target":
        if action != "ask":
            raise ValueError("default_target is only allowed with ask")
        return parse_token(value, "default_target")
    raise ValueError(f"unknown parameter {key!r}")


def make_rule(service: str | None, argument: str | None, source: str, target: str,
              action_words: list[str], *, commas: bool, path: Path, lineno: int,
              text: str) -> Rule:
    """Build a rule from its columns; raise PolicySyntaxError naming the line."""
    try:
        fields = parse_action(action_words, commas=commas)
        redirect = fields.pop("target", None)
        return Rule(service=service, argument=argument,
                    source=parse_token(source, "source"),
                    target=parse_token(target, "target"),
                    redirect=redirect,  # type: ignore[arg-type]
                    path=path, lineno=lineno, text=text, **fields)  # type: ignore[arg-type]
    except (ValueError, PolicyTokenError) as err:
        raise PolicySyntaxError(path, lineno, str(err)) from None
