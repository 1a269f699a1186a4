"""Reading the policy directory into an ordered list of rules.

Current format (``policy.d/*.policy``, in "C" lexical order)::

    SERVICE +ARG|* SOURCE TARGET ACTION [PARAM=VALUE ...]
    !include FILE
    !include-dir DIR
    !include-service SERVICE +ARG|* FILE
    !compat-4.0

Files included with ``!include-service`` (and the older per-service files
under ``qubes-rpc/policy/``) hold ``SOURCE TARGET ACTION[,PARAM=VALUE]`` lines
and ``$include:FILE`` lines; ``$``-spelled tokens are accepted there.

Every file is untrusted text: sizes, line lengths and include depth are
bounded, loops are refused, and any error names the file and line. A policy
that fails to load is not partly used: the caller denies everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from qubes_core.policy.rules import PolicySyntaxError, Rule, check_service, make_rule

MAX_FILE_SIZE = 4 * 1024 * 1024
MAX_LINE_LENGTH = 4096
MAX_INCLUDE_DEPTH = 16
MAX_RULES = 200_000
POLICY_FILE_RE = re.compile(r"^[0-9a-z_.-]+\.policy$")
LEGACY_FILE_RE = re.compile(r"^[A-Za-z0-9_.-]+(\+[A-Za-z0-9_.+-]*)?$")


@dataclass
class ParsedPolicy:
    """The rules in evaluation order, and every file that was read (for the watcher)."""

    rules: list[Rule] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def policy_files(directory: Path) -> list[Path]:
    """The ``*.policy`` files of a directory, in "C" order; a badly named one is an error."""
    try:
        names = sorted(entry.name for entry in directory.iterdir())
    except FileNotFoundError:
        raise PolicySyntaxError(directory, None, "policy directory does not exist") from None
    except NotADirectoryError:
        raise PolicySyntaxError(directory, None, "not a directory") from None
    found = []
    for name in names:
        if name.startswith(".") or not name.endswith(".policy"):
            continue
        if not POLICY_FILE_RE.fullmatch(name):
            raise PolicySyntaxError(
                directory / name, None,
                "invalid policy file name: use lowercase letters, digits, '_', '.', '-'",
            )
        if (directory / name).is_file():
            found.append(directory / name)
    return found


class PolicyParser:
    """Reads one policy tree. ``legacy_dir`` is where ``!compat-4.0`` looks."""

    def __init__(self, policy_dir: Path, legacy_dir: Path | None = None):
        self.policy_dir = Path(policy_dir)
        self.legacy_dir = Path(legacy_dir) if legacy_dir is not None else None
        self.result = ParsedPolicy()
        self._stack: list[Path] = []

    def load(self) -> ParsedPolicy:
        self.result.files.append(self.policy_dir)
        for path in policy_files(self.policy_dir):
            self._read_full(path, None, 0)
        return self.result

    # --- files ----------------------------------------------------------

    def _resolve(self, name: str, root: Path, origin: Path, lineno: int) -> Path:
        if not name:
            raise PolicySyntaxError(origin, lineno, "include without a path")
        path = Path(name)
        return path if path.is_absolute() else root / path

    def _lines(self, path: Path, origin: Path | None, lineno: int | None
               ) -> list[tuple[int, str]]:
        where_from = (origin, lineno) if origin is not None else (path, None)
        try:
            if not path.is_file():
                what = "does not exist" if not path.exists() else "is not a file"
                raise PolicySyntaxError(*where_from, f"included file {path} {what}")
            if path.stat().st_size > MAX_FILE_SIZE:
                raise PolicySyntaxError(path, None,
                                        f"file is larger than {MAX_FILE_SIZE} bytes")
            data = path.read_bytes()
        except OSError as err:
            raise PolicySyntaxError(*where_from, f"cannot read {path}: {err.strerror}") from None
        self.result.files.append(path)
        lines = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if len(raw) > MAX_LINE_LENGTH:
                raise PolicySyntaxError(path, number,
                                        f"line is longer than {MAX_LINE_LENGTH} bytes")
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise PolicySyntaxError(path, number, "line is not valid UTF-8") from None
            if text and not text.startswith("#"):
                lines.append((number, text))
        return lines

    def _enter(self, path: Path, origin: Path | None, lineno: int | None, depth: int) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise PolicySyntaxError(origin or path, lineno,
                                    f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        real = path.resolve()
        if real in self._stack:
            chain = " -> ".join(str(p) for p in [*self._stack, real])
            raise PolicySyntaxError(origin or path, lineno, f"include loop: {chain}")
        self._stack.append(real)

    def _add(self, rule: Rule) -> None:
        if len(self.result.rules) >= MAX_RULES:
            raise PolicySyntaxError(rule.path, rule.lineno,
                                    f"more than {MAX_RULES} rules in the policy")
        self.result.rules.append(rule)

    # --- current format -------------------------------------------------

    def _read_full(self, path: Path, origin: Path | None, lineno: int | None,
                   depth: int = 0) -> None:
        self._enter(path, origin, lineno, depth)
        try:
            for number, line in self._lines(path, origin, lineno):
                if line.startswith("!"):
                    self._directive(path, number, line, depth)
                else:
                    self._full_rule(path, number, line)
        finally:
            self._stack.pop()

    def _full_rule(self, path: Path, number: int, line: str) -> None:
        words = line.split()
        if len(words) < 5:
            raise PolicySyntaxError(
                path, number,
                "expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...]",
            )
        try:
            service, argument = check_service(words[0], words[1])
        except ValueError as err:
            raise PolicySyntaxError(path, number, str(err)) from None
        self._add(make_rule(service, argument, words[2], words[3], words[4:], commas=False,
                            path=path, lineno=number, text=line))

    def _directive(self, path: Path, number: int, line: str, depth: int) -> None:
        words = line.split()
        name, args = words[0], words[1:]
        expected = {"!include": 1, "!include-dir": 1, "!include-service": 3, "!compat-4.0": 0}
        if name not in expected:
            raise PolicySyntaxError(path, number, f"unknown directive {name!r}")
        if len(args) != expected[name]:
            raise PolicySyntaxError(path, number,
                                    f"{name} takes {expected[name]} argument(s), got {len(args)}")
        if name == "!include":
            self._read_full(self._resolve(args[0], self.policy_dir, path, number),
                            path, number, depth + 1)
        elif name == "!include-dir":
            directory = self._resolve(args[0], self.policy_dir, path, number)
            if not directory.is_dir():
                raise PolicySyntaxError(path, number,
                                        f"included directory {directory} does not exist")
            for child in policy_files(directory):
                self._read_full(child, path, number, depth + 1)
        elif name == "!include-service":
            try:
                service, argument = check_service(args[0], args[1])
            except ValueError as err:
                raise PolicySyntaxError(path, number, str(err)) from None
            self._read_service_file(self._resolve(args[2], self.policy_dir, path, number),
                                    service, argument, self.policy_dir, path, number,
                                    depth + 1)
        else:
            self._compat(path, number, depth)

    # --- service files and the older format -----------------------------

    def _read_service_file(self, path: Path, service: str | None, argument: str | None,
                           root: Path, origin: Path | None, lineno: int | None,
                           depth: int) -> None:
        self._enter(path, origin, lineno, depth)
        try:
            for number, line in self._lines(path, origin, lineno):
                include = _include_target(line)
                if include is not None:
                    self._read_service_file(self._resolve(include, root, path, number),
                                            service, argument, root, path, number, depth + 1)
                    continue
                if line.startswith("!"):
                    raise PolicySyntaxError(path, number,
                                            f"directive not allowed here: {line.split()[0]!r}")
                words = line.split()
                if len(words) < 3:
                    raise PolicySyntaxError(path, number,
                                            "expected SOURCE TARGET ACTION[,PARAM=VALUE ...]")
                self._add(make_rule(service, argument, words[0], words[1], words[2:],
                                    commas=True, path=path, lineno=number, text=line))
        finally:
            self._stack.pop()

    def _compat(self, origin: Path, lineno: int, depth: int) -> None:
        """Rules of the older per-service files, as the 4.0 system evaluated them."""
        if self.legacy_dir is None or not self.legacy_dir.is_dir():
            return
        for entry in sorted(self.legacy_dir.iterdir(), key=lambda p: p.name):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            if not LEGACY_FILE_RE.fullmatch(entry.name):
                continue  # editor backups and the like; the 4.0 system ignored them too
            service, plus, argument = entry.name.partition("+")
            self._read_service_file(entry, service, argument if plus else None,
                                    self.legacy_dir, origin, lineno, depth + 1)
            if plus:
                # A file for one argument ended in an implicit deny.
                self._add(make_rule(service, argument, "@anyvm", "@anyvm", ["deny"],
                                    commas=False, path=entry, lineno=0,
                                    text="(implicit) @anyvm @anyvm deny"))


def _include_target(line: str) -> str | None:
    """The path of an include line of a service file, else None."""
    for prefix in ("$include:", "@include:"):
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    words = line.split()
    if words and words[0] in ("!include", "@include"):
        if len(words) != 2:
            return ""
        return words[1]
    return None


def parse_policy(policy_dir: Path, legacy_dir: Path | None = None) -> ParsedPolicy:
    """Read a whole policy tree; raise PolicySyntaxError on the first problem."""
    return PolicyParser(policy_dir, legacy_dir).load()
