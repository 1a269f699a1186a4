"""VM creations not yet known to be in qubes.xml, so that a killed qubesd cleans up after them.

A VM is created on disk (its volumes, its directory) before the save of
qubes.xml that records it. A qubesd killed in between leaves files that no VM
owns, and a later VM of that name would find them in its way. So before a VM's
files are made, a record of them (the VM's uuid, name, directory and volumes)
is written to ``BASE/pending-creations/UUID.json``. At the next start of qubesd,
:func:`clean_up` looks at each record: a VM that qubes.xml has was saved (its
record goes); one it has not was never acknowledged, and its files go. Only
files named in a record are ever removed: a directory that merely lacks a VM
(put there by hand, or by another installation sharing a pool) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING

from qubes_core import fsutil

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.lifecycle import LifecycleMixin

log = logging.getLogger("qubes.vm.pending")

DIRECTORY = "pending-creations"


def _directory(app: Qubes) -> Path | None:
    store = app.store
    return None if store is None else store.path.parent / DIRECTORY


def record(vm: LifecycleMixin) -> None:
    """Note, durably, the files ``vm`` is about to get (before they are made)."""
    directory = _directory(vm.app)
    if directory is None or vm.uuid is None:
        return
    entry = {
        "name": vm.name,
        "dir_path": str(vm.dir_path),
        "volumes": [{"pool": config.get("pool"), "vid": config.get("vid")}
                    for name, config in sorted(vm.volume_config.items())
                    if name != "kernel" and config.get("vid")],
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{vm.uuid}.json"
    temporary = path.with_name(path.name + "~")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(entry, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, path)
    fsutil.fsync_dir(directory)


def forget(vm: LifecycleMixin) -> None:
    """Drop the record of ``vm`` (its files are gone, or it is saved)."""
    directory = _directory(vm.app)
    if directory is not None and vm.uuid is not None:
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{vm.uuid}.json").unlink()


async def clean_up(app: Qubes) -> list[str]:
    """At start: remove the files of the VMs whose creation qubes.xml never recorded.

    Returns the names of those VMs. A record that cannot be read is left, with a
    warning: nothing is removed on a guess.
    """
    directory = _directory(app)
    if directory is None or not directory.is_dir():
        return []
    known = {vm.uuid for vm in app.domains}
    removed = []
    for path in sorted(directory.glob("*.json")):
        try:
            vm_uuid = uuidlib.UUID(path.stem)
            entry = json.loads(path.read_text(encoding="utf-8"))
            name = str(entry["name"])
            volumes = [(str(v["pool"]), str(v["vid"])) for v in entry["volumes"]]
            dir_path = str(entry["dir_path"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("cannot read %s (left as it is): %s", path, error)
            continue
        if vm_uuid in known:
            path.unlink()
            continue
        if name in app.domains:  # a VM of that name owns the files now
            log.warning("keeping the files of %s: a VM of that name exists, not the one "
                        "whose creation was interrupted", name)
            path.unlink()
            continue
        await _remove_files(app, name, volumes, dir_path)
        path.unlink()
        removed.append(name)
    return removed


async def _remove_files(app: Qubes, name: str, volumes: list[tuple[str, str]],
                        dir_path: str) -> None:
    for pool_name, vid in volumes:
        pool = app.pools.get(pool_name)
        if pool is None:
            continue
        try:
            await pool.get_volume(vid).remove()
        except Exception as error:  # a driver's refusal must not stop qubesd
            log.warning("%s: cannot remove volume %s of an interrupted creation: %s", name,
                        vid, error)
    base = app.base_dir
    path = Path(dir_path) if dir_path else None
    if path is not None and path.is_dir() and base in path.parents:
        shutil.rmtree(path, ignore_errors=True)
    log.info("removed the files of %s, whose creation was interrupted before qubes.xml "
             "recorded it", name)
