"""Broken and hostile policy files: a clear error naming file and line, and deny."""

from __future__ import annotations

from pathlib import Path

import pytest

from qubes_core.policy import DomainInfo, FixedSystem, PolicySyntaxError, Request
from qubes_core.policy.evaluate import Policy
from qubes_core.policy.parser import MAX_INCLUDE_DEPTH, MAX_LINE_LENGTH
from qubes_core.policy.watch import PolicyWatcher

SYSTEM = FixedSystem([DomainInfo("dom0", "AdminVM"), DomainInfo("work", "AppVM"),
                      DomainInfo("vault", "AppVM")])
ALLOW_ALL = "* * @anyvm @anyvm allow\n"

# file content of 50-bad.policy -> (line, words the message must hold)
BROKEN = [
    ("qubes.X * work vault allow extra-word\n", 1, "invalid parameter"),
    ("qubes.X * work vault permit\n", 1, "unknown action 'permit'"),
    ("qubes.X * work @everyone allow\n", 1, "unknown token '@everyone'"),
    ("qubes.X * @default vault allow\n", 1, "'@default' is not allowed as the source"),
    ("qubes.X * @dispvm vault allow\n", 1, "'@dispvm' is not allowed as the source"),
    ("qubes.X * work vault allow target=@anyvm\n", 1, "'@anyvm' is not allowed as target="),
    ("qubes.X * work vault deny target=vault\n", 1, "not allowed with deny"),
    ("qubes.X * work vault allow default_target=vault\n", 1, "only allowed with ask"),
    ("qubes.X * work vault allow,target=vault\n", 1, "separated by spaces, not commas"),
    ("qubes.X * work vault allow user=a;b\n", 1, "invalid user"),
    ("qubes.X * work vault allow notify=maybe\n", 1, "notify must be yes or no"),
    ("qubes.X * work vault allow target=vault target=work\n", 1, "given twice"),
    ("qubes.X * work vault allow colour=red\n", 1, "unknown parameter 'colour'"),
    ("# fine\n\nqubes.X * work vault\n", 3, "expected SERVICE ARGUMENT"),
    ("* +arg work vault allow\n", 1, "service '*' needs argument '*'"),
    ("qubes.X arg work vault allow\n", 1, "invalid argument 'arg'"),
    ("qubes/X * work vault allow\n", 1, "invalid service name"),
    ("qubes.X * wo$rk vault allow\n", 1, "invalid qube name"),
    ("qubes.X * @tag:a/b vault allow\n", 1, "invalid tag"),
    ("qubes.X * @type:App-VM vault allow\n", 1, "invalid class"),
    ("!include-everything foo\n", 1, "unknown directive '!include-everything'"),
    ("!include\n", 1, "!include takes 1 argument"),
    ("!include include/missing\n", 1, "does not exist"),
    ("!include-dir nodir\n", 1, "does not exist"),
    ("!include-service qubes.X * include/missing\n", 1, "does not exist"),
    ("qubes.X * work vault allow\n" + "x" * (MAX_LINE_LENGTH + 1) + "\n", 2,
     "longer than"),
]


def _write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(("content", "line", "message"), BROKEN)
def test_broken_file_is_named_and_denies(tmp_path: Path, content: str, line: int,
                                         message: str) -> None:
    # An earlier file allows everything: a broken later file must still deny all.
    _write(tmp_path, "10-allow.policy", ALLOW_ALL)
    bad = _write(tmp_path, "50-bad.policy", content)
    with pytest.raises(PolicySyntaxError) as info:
        Policy.load(tmp_path)
    assert info.value.path == bad
    assert info.value.lineno == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"{bad}:{line}: ")

    watcher = PolicyWatcher(tmp_path)
    assert not watcher.reload()
    decision = watcher.evaluate(Request.parse("qubes.X", "work", "vault"), SYSTEM)
    assert decision.action == "deny"
    assert f"50-bad.policy:{line}" in decision.reason


def test_not_utf8(tmp_path: Path) -> None:
    _write(tmp_path, "50-bad.policy", b"qubes.X * work vault allow\n\xff\xfe allow\n")
    with pytest.raises(PolicySyntaxError, match=r"50-bad.policy:2: line is not valid UTF-8"):
        Policy.load(tmp_path)


def test_huge_file_without_newlines(tmp_path: Path) -> None:
    _write(tmp_path, "50-bad.policy", b"#" * (5 * 1024 * 1024))
    with pytest.raises(PolicySyntaxError, match="larger than"):
        Policy.load(tmp_path)


def test_badly_named_file_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "30-User.policy", ALLOW_ALL)
    with pytest.raises(PolicySyntaxError, match="invalid policy file name"):
        Policy.load(tmp_path)


def test_missing_policy_directory(tmp_path: Path) -> None:
    watcher = PolicyWatcher(tmp_path / "nothing")
    assert not watcher.reload()
    decision = watcher.evaluate(Request.parse("qubes.X", "work", "vault"), SYSTEM)
    assert decision.action == "deny"
    assert "does not exist" in decision.reason


@pytest.mark.parametrize("kind", ["full", "service", "self", "dir"])
def test_include_loops(tmp_path: Path, kind: str) -> None:
    if kind == "full":
        _write(tmp_path, "10-a.policy", "!include include/b\n")
        _write(tmp_path, "include/b", "qubes.X * work vault deny\n!include include/c\n")
        _write(tmp_path, "include/c", "!include include/b\n")
    elif kind == "service":
        _write(tmp_path, "10-a.policy", "!include-service qubes.X * include/b\n")
        _write(tmp_path, "include/b", "$include:include/c\n")
        _write(tmp_path, "include/c", "!include include/b\n")
    elif kind == "self":
        _write(tmp_path, "10-a.policy", "!include 10-a.policy\n")
    else:
        _write(tmp_path, "10-a.policy", "!include-dir .\n")
    with pytest.raises(PolicySyntaxError, match="include loop") as info:
        Policy.load(tmp_path)
    assert info.value.lineno is not None


def test_deep_includes_are_bounded(tmp_path: Path) -> None:
    _write(tmp_path, "10-a.policy", "!include include/0\n")
    for level in range(MAX_INCLUDE_DEPTH + 2):
        _write(tmp_path, f"include/{level}", f"!include include/{level + 1}\n")
    _write(tmp_path, f"include/{MAX_INCLUDE_DEPTH + 2}", ALLOW_ALL)
    with pytest.raises(PolicySyntaxError, match="nested deeper"):
        Policy.load(tmp_path)


def test_directive_in_service_file(tmp_path: Path) -> None:
    _write(tmp_path, "10-a.policy", "!include-service qubes.X * include/b\n")
    _write(tmp_path, "include/b", "work vault allow\n!include-dir include\n")
    with pytest.raises(PolicySyntaxError, match=r"include/b:2: directive not allowed"):
        Policy.load(tmp_path)


def test_many_rules_still_fast_enough_to_load(tmp_path: Path) -> None:
    """A large but valid file loads; every rule is kept, in order."""
    lines = "".join(f"qubes.S{i} * work vault allow\n" for i in range(5000))
    _write(tmp_path, "10-many.policy", lines)
    policy = Policy.load(tmp_path)
    assert len(policy.rules) == 5000
    assert policy.evaluate(Request.parse("qubes.S4999", "work", "vault"), SYSTEM).allowed
    assert not policy.evaluate(Request.parse("qubes.S5000", "work", "vault"), SYSTEM).allowed
