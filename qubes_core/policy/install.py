"""Writing the generated trees into an etc directory, and checking them.

Installing is idempotent: an entry that already has the right content is not
touched, generated entries for methods that no longer exist are removed, and
the include files the admin edits are only created when missing. The check
proves the install lists match the registry: one policy line and one rpc entry
per method, and nothing for a method that does not exist.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qubes_core import fsutil
from qubes_core.policy.generate import (
    ADMIN_DEFAULT,
    MARKER,
    VM_FACING_DEFAULT,
    Entry,
    exposed,
    generate,
)
from qubes_core.policy.parser import parse_policy
from qubes_core.policy.rules import PolicySyntaxError

log = logging.getLogger("qubes.policy.install")


def _atomic_link(path: Path, target: str) -> None:
    tmp = path.parent / f".{path.name}~link"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _up_to_date(path: Path, entry: Entry) -> bool:
    if entry.kind == "link":
        return path.is_symlink() and os.readlink(path) == entry.content
    if path.is_symlink() or not path.is_file():
        return False
    if not entry.replace:
        return True
    try:
        same = path.read_text(encoding="utf-8") == entry.content
    except (OSError, UnicodeDecodeError):
        return False
    executable = bool(path.stat().st_mode & 0o111)
    return same and executable == (entry.kind == "script")


def _generated_by_us(path: Path, sockets: set[str]) -> bool:
    if path.is_symlink():
        return os.readlink(path) in sockets
    if not path.is_file():
        return False
    try:
        with path.open("rb") as stream:
            head = stream.read(4096)
    except OSError:
        return False
    return MARKER.encode() in head


def install(methods: Iterable[Any], paths: Any, *, legacy: bool = False) -> list[str]:
    """Bring the etc tree of ``paths`` in line with the registry; return what changed."""
    etc = Path(paths.etc_dir)
    entries = generate(methods, paths, legacy=legacy)
    changes: list[str] = []
    wanted = set()
    for entry in entries:
        path = etc / entry.path
        wanted.add(path)
        if _up_to_date(path, entry):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "link":
            _atomic_link(path, entry.content)
        else:
            fsutil.write_atomic(path, entry.content, 0o755 if entry.kind == "script" else 0o644)
        changes.append(f"wrote {path}")
    sockets = {str(paths.admin_socket), str(paths.misc_socket), str(paths.internal_socket)}
    for directory in (Path(paths.policy_dir), Path(paths.rpc_dir), Path(paths.rpc_dir) / "policy"):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path not in wanted and _generated_by_us(path, sockets):
                path.unlink()
                changes.append(f"removed {path}")
    for change in changes:
        log.info("%s", change)
    return changes


def check(methods: Iterable[Any], paths: Any) -> list[str]:
    """What is wrong between the registry and the installed trees (empty: all good)."""
    methods = list(methods)
    by_name = {m.name: m for m in methods}
    problems: list[str] = []
    policy_dir, rpc_dir = Path(paths.policy_dir), Path(paths.rpc_dir)
    try:
        parse_policy(policy_dir, rpc_dir / "policy")
    except PolicySyntaxError as err:
        problems.append(f"policy does not load: {err}")

    lines = _policy_lines(policy_dir / ADMIN_DEFAULT, problems)
    includes = Counter(words[1] for words in lines if words[0] == "!include-service")
    for words in lines:
        if words[0] != "!include-service" or len(words) != 4:
            problems.append(f"{ADMIN_DEFAULT}: unexpected line {' '.join(words)!r}")
            continue
        spec = by_name.get(words[1])
        if spec is None or spec.socket != "admin":
            problems.append(f"{ADMIN_DEFAULT}: policy line for {words[1]}, "
                            "which is not an Admin API method")
        elif words[3] != f"include/{spec.policy_group}":
            problems.append(f"{ADMIN_DEFAULT}: {words[1]} includes {words[3]}, "
                            f"expected include/{spec.policy_group}")
    facing = Counter(words[0] for words in _policy_lines(policy_dir / VM_FACING_DEFAULT,
                                                         problems))
    for name in facing:
        spec = by_name.get(name)
        if spec is None or spec.socket != "misc":
            problems.append(f"{VM_FACING_DEFAULT}: policy line for {name}, "
                            "which is not a VM-facing method")
    for spec in methods:
        count = includes[spec.name] + facing[spec.name]
        expected = 1 if exposed(spec) else 0
        if count != expected:
            problems.append(f"{spec.name}: {count} policy lines, expected {expected}")
    problems.extend(_check_rpc(methods, paths))
    return problems


def _policy_lines(path: Path, problems: list[str]) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problems.append(f"cannot read {path}: {err}")
        return []
    return [line.split() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _check_rpc(methods: list[Any], paths: Any) -> list[str]:
    problems = []
    rpc_dir = Path(paths.rpc_dir)
    by_name = {m.name: m for m in methods}
    sockets = {str(paths.admin_socket): "admin", str(paths.misc_socket): "misc",
               str(paths.internal_socket): "internal"}
    for spec in methods:
        path = rpc_dir / spec.name
        if not exposed(spec):
            if path.exists() or path.is_symlink():
                problems.append(f"{path}: installed, but {spec.name} is not served over qrexec")
        elif spec.socket == "admin":
            if not (path.is_symlink() and os.readlink(path) == str(paths.admin_socket)):
                problems.append(f"{path}: missing, or not a link to {paths.admin_socket}")
        elif not (path.is_file() and os.access(path, os.X_OK)
                  and str(paths.misc_socket) in path.read_text(encoding="utf-8")):
            problems.append(f"{path}: missing, or not a script relaying to {paths.misc_socket}")
    if rpc_dir.is_dir():
        for path in sorted(rpc_dir.iterdir()):
            ours = _generated_by_us(path, set(sockets)) or path.name.startswith("admin.")
            if ours and path.name not in by_name and not path.is_dir():
                problems.append(f"{path}: installed for {path.name}, which is not a method")
    legacy = rpc_dir / "policy"
    if legacy.is_dir():
        for path in sorted(legacy.iterdir()):
            if _generated_by_us(path, set()) and by_name.get(path.name) is None:
                problems.append(f"{path}: legacy policy for {path.name}, which is not a method")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``qubes-policy-install``: write the generated policy and rpc entries (not with
    ``--check``), then check them against the registry; exits 1 on a mismatch.
    """
    from qubes_core.api.registry import all_methods
    from qubes_core.paths import resolve

    parser = argparse.ArgumentParser(
        prog="qubes-policy-install",
        description="Install the qrexec policy and qubes-rpc entries of the Admin API "
                    "(generated from its method registry), or check them.")
    parser.add_argument("--base-dir", help="installation to write to (default: "
                        "$QUBES_BASE_DIR, else the real /etc)")
    parser.add_argument("--legacy", action="store_true",
                        help="also write the 4.0 per-service files under qubes-rpc/policy")
    parser.add_argument("--check", action="store_true",
                        help="only check that the installed trees match the registry")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = resolve(args.base_dir)
    methods = all_methods()
    if not args.check:
        changes = install(methods, paths, legacy=args.legacy)
        print(f"{len(changes)} change(s) under {paths.etc_dir}")
    problems = check(methods, paths)
    for problem in problems:
        print(f"qubes-policy-install: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
