"""Backup profiles as Qubes keeps them: one YAML file ``NAME.conf`` per profile in
``/etc/qubes/backup`` (``BASE/etc/qubes/backup`` for a relocated installation).

Invariant: a profile is checked in full when it is read, and a refusal names the
profile and what is wrong with it, before any backup work starts. Keys:
``destination_vm`` and ``destination_path`` (required), ``include`` (VM names,
``@tag:T``, ``@type:CLASS``; ``$`` may stand for ``@`` as in older files; absent
or empty: every VM whose ``include_in_backups`` is set), ``exclude`` (same
forms), ``compression`` (True, False, or a filter name) and ``passphrase_text``
or ``passphrase_vm``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from qubes_core import exc
from qubes_core.backup import COMPRESSION_FILTERS, DEFAULT_COMPRESSION
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM

PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_PROFILE_BYTES = 64 * 1024
KEYS = {"destination_vm", "destination_path", "include", "exclude", "compression",
        "passphrase_text", "passphrase_vm"}


@dataclass
class BackupProfile:
    """What one profile asks for."""

    name: str
    destination_vm: str
    destination_path: str
    include: list[str] | None
    exclude: list[str]
    compression: str | None
    passphrase: bytes | None


def profile_dir(paths: Any) -> Path:
    """Where the profiles of the installation at ``paths`` live."""
    return Path(paths.etc_dir) / "qubes" / "backup"


def _names(value: Any, key: str, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise exc.QubesException(f"backup profile {name!r}: {key} must be a list of names")
    return [item.replace("$", "@") for item in value]


def load_profile(directory: Path, name: str) -> BackupProfile:
    """The profile ``name`` from ``directory``, checked."""
    if not PROFILE_NAME_RE.match(name):
        raise exc.QubesValueError(
            f"invalid backup profile name {name[:70]!r}: letters, digits, '_', '.', '-'")
    path = directory / f"{name}.conf"
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise exc.QubesBackupProfileNotFoundError(
            f"backup profile {name!r} does not exist (no {path})") from None
    except OSError as error:
        raise exc.QubesException(f"cannot read backup profile {name!r}: {error}") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise exc.QubesException(f"backup profile {name!r} is larger than 64 KiB")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise exc.QubesException(f"backup profile {name!r} is not YAML: {first}") from None
    if not isinstance(data, dict):
        raise exc.QubesException(f"backup profile {name!r} must be a mapping of settings")
    unknown = sorted(str(key) for key in set(data) - KEYS)
    if unknown:
        raise exc.QubesException(
            f"backup profile {name!r}: unknown setting {', '.join(unknown)} "
            f"(known: {', '.join(sorted(KEYS))})")
    for key in ("destination_vm", "destination_path"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise exc.QubesException(f"backup profile {name!r}: {key} is missing")
    compression = data.get("compression", True)
    if compression is True:
        compression = DEFAULT_COMPRESSION
    elif compression is False or compression is None:
        compression = None
    elif compression not in COMPRESSION_FILTERS:
        raise exc.QubesException(
            f"backup profile {name!r}: compression must be True, False or one of "
            f"{', '.join(COMPRESSION_FILTERS)}, not {compression!r}")
    passphrase = data.get("passphrase_text")
    if passphrase is not None:
        if not isinstance(passphrase, str | int) or not str(passphrase):
            raise exc.QubesException(f"backup profile {name!r}: passphrase_text is empty")
        passphrase = str(passphrase).encode("utf-8")
    include = data.get("include")
    return BackupProfile(
        name=name, destination_vm=data["destination_vm"],
        destination_path=data["destination_path"],
        include=_names(include, "include", name) or None,
        exclude=_names(data.get("exclude"), "exclude", name),
        compression=compression, passphrase=passphrase)


def matches(vm: BaseVM, pattern: str) -> bool:
    """Whether ``vm`` is named by ``pattern``: its name, ``@tag:T`` or ``@type:CLASS``."""
    if pattern.startswith("@tag:"):
        return pattern[5:] in vm.tags
    if pattern.startswith("@type:"):
        return type(vm).__name__ == pattern[6:]
    return bool(vm.name == pattern)


def selected_vms(app: Qubes, profile: BackupProfile) -> list[QubesVM]:
    """The VMs the profile backs up, by name (dom0 never: its home is not backed up)."""
    vms = [vm for vm in app.domains if isinstance(vm, QubesVM)]  # every domain but dom0
    if profile.include is None:
        chosen = [vm for vm in vms if vm.include_in_backups]
    else:
        chosen = [vm for vm in vms if any(matches(vm, pattern) for pattern in profile.include)]
    return sorted((vm for vm in chosen
                   if not any(matches(vm, pattern) for pattern in profile.exclude)),
                  key=lambda vm: vm.name)
