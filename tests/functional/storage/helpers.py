"""Small helpers for the storage tests: volumes from plain configs, image contents."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from qubes_core.storage import Volume
from qubes_core.storage.reflink import FileReflinkPool

MiB = 1024**2


def volume(pool: FileReflinkPool, vid: str, *, source: Volume | None = None,
           **config: Any) -> Volume:
    """A volume of ``pool``; by default a persistent (private-like) one of 64 MiB."""
    config.setdefault("name", os.path.basename(vid))
    config.setdefault("vid", vid)
    config.setdefault("size", 64 * MiB)
    config.setdefault("rw", True)
    config.setdefault("save_on_stop", not config.get("snap_on_start", False))
    config.setdefault("snap_on_start", False)
    return pool.init_volume(None, config, source)


def add_small_vms(app: Any, size: int) -> tuple[Any, Any]:
    """A template ``tpl`` (the default) and an AppVM ``work`` whose volumes are ``size`` bytes."""
    template = app.add_new_vm("TemplateVM", name="tpl", label="black")
    app.default_template = template
    work = app.add_new_vm("AppVM", name="work", label="blue")
    for vm in (template, work):
        for config in vm.volume_config.values():
            if "size" in config:
                config["size"] = size
    return template, work


def write_at(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def fill(path: str, marker: bytes, length: int = 8 * MiB, offset: int = 0) -> bytes:
    """Write ``length`` bytes of a pattern made from ``marker``; return them."""
    block = (marker * (MiB // len(marker) + 1))[:MiB]
    data = block * (length // MiB)
    write_at(path, offset, data)
    return data


def digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            sha.update(chunk)
    return sha.hexdigest()


def files_of(directory: str) -> list[str]:
    return sorted(os.listdir(directory))
