"""``qubes-pool-migrate``: move ``file`` pools to the ``file-reflink`` driver.

It does what users were told to do by hand (stop every VM, change
``driver="file"`` to ``driver="file-reflink"`` in qubes.xml, remove the
``*-cow.img`` files), as one step that is safe to repeat:

1. refuse while any VM with a volume in the pool runs, or has an uncommitted
   image (``*-dirty.img``: it runs, or was not cleanly stopped);
2. check that the pool's own filesystem can reflink (a real FICLONE), unless
   ``--setup-check no`` accepts slow copies;
3. keep a backup of qubes.xml (``qubes.xml.pre-migration-TIMESTAMP``);
4. save qubes.xml with the new driver, then remove the device-mapper
   ``*-cow.img`` files, and report every change.

qubes.xml is opened with its exclusive lock, so qubesd must be stopped first.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qubes_core import exc, paths
from qubes_core.fsutil import fsync_dir
from qubes_core.storage import Pool, fileops, make_pool
from qubes_core.storage.reflink import filesystem_type

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM

RUNNING_STATES = ("Running", "Transient", "Paused", "Suspended", "Halting", "Dying")


@dataclass
class MigrationReport:
    """What a migration changed, or would change (``dry_run``)."""

    dry_run: bool = False
    backup: Path | None = None
    pools: list[str] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report, one line a change."""
        verb = "would" if self.dry_run else ""
        out = []
        if self.backup is not None:
            out.append(f"backup of qubes.xml: {self.backup}")
        for pool in self.pools:
            out.append(f"pool {pool}: driver file -> file-reflink" + (f" ({verb} change)"
                                                                    if verb else ""))
        for path, size in self.removed:
            action = "would remove" if self.dry_run else "removed"
            out.append(f"{action} {path} ({size} bytes on disk)")
        if not self.pools and not self.removed:
            out.append("nothing to migrate")
        return out


def pool_users(app: Qubes, pool_name: str) -> list[BaseVM]:
    """VMs with at least one volume in the pool."""
    return [vm for vm in app.domains
            if any(c.get("pool") == pool_name for c in vm.volume_config.values())]


def cow_files(dir_path: str) -> list[str]:
    """The old driver's ``*-cow.img`` files under the pool directory (to remove)."""
    return sorted(glob.glob(os.path.join(glob.escape(dir_path), "**", "*-cow.img"),
                            recursive=True))


def check_pool_idle(app: Qubes, pool: Pool) -> None:
    """Refuse if a VM of the pool runs, or an image of the pool is in use."""
    running = sorted(vm.name for vm in pool_users(app, pool.name)
                     if vm.get_power_state() in RUNNING_STATES)
    if running:
        raise exc.QubesVMNotHaltedError(
            None, f"pool {pool.name}: VMs using it are running: {', '.join(running)} "
                  "(shut them down first)")
    dir_path = pool.config.get("dir_path", "")
    dirty = sorted(glob.glob(os.path.join(glob.escape(dir_path), "**", "*-dirty.img"),
                             recursive=True))
    if dirty:
        raise exc.QubesVMNotHaltedError(
            None, f"pool {pool.name}: images are in use or were not cleanly stopped: "
                  f"{', '.join(dirty)} (stop their VMs first)")


def check_reflink(pool: Pool, setup_check: bool) -> None:
    """Refuse a migration to a filesystem that cannot reflink, unless told to accept it."""
    dir_path = pool.config.get("dir_path", "")
    if not os.path.isdir(dir_path):
        raise exc.StoragePoolException(f"pool {pool.name}: {dir_path!r} is not a directory")
    if not setup_check:
        return
    supported, reason = fileops.reflink_supported(dir_path)
    if not supported:
        raise exc.StoragePoolException(
            f"pool {pool.name}: the {filesystem_type(dir_path)} filesystem of {dir_path} "
            f"cannot reflink ({reason}); migrate with --setup-check no to accept slow full "
            "copies, or move the pool to XFS or btrfs")


def backup_store(path: Path) -> Path:
    """Copy qubes.xml next to itself, fsynced, under a name that is never reused."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    backup = path.with_name(f"{path.name}.pre-migration-{stamp}")
    counter = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.pre-migration-{stamp}-{counter}")
        counter += 1
    shutil.copy2(path, backup)
    fileops.fsync_path(backup)
    fsync_dir(path.parent)
    return backup


def migrate(app: Qubes, pool_names: list[str] | None = None, *, setup_check: bool = True,
            dry_run: bool = False) -> MigrationReport:
    """Switch the named (default: every) ``file`` pool of ``app`` to ``file-reflink``."""
    report = MigrationReport(dry_run=dry_run)
    names = pool_names or sorted(name for name, pool in app.pools.items()
                                 if pool.driver in ("file", "file-reflink"))
    for name in names:
        if name not in app.pools:
            raise exc.QubesValueError(f"no such pool: {name!r}")
        if app.pools[name].driver not in ("file", "file-reflink"):
            raise exc.QubesValueError(
                f"pool {name!r} uses driver {app.pools[name].driver!r}, not file")
    to_switch = [name for name in names if app.pools[name].driver == "file"]
    for name in names:
        pool = app.pools[name]
        check_pool_idle(app, pool)
        if name in to_switch:
            check_reflink(pool, setup_check)
    if to_switch:
        report.pools = to_switch
        if not dry_run:
            if app.store is None:
                raise exc.QubesException("a migration needs the qubes.xml it changes")
            report.backup = backup_store(app.store.path)
            for name in to_switch:
                config = dict(app.pools[name].config)
                if not setup_check:
                    config["setup_check"] = "no"
                app.pools[name] = make_pool(name, "file-reflink", **config)
            app.save()
    for name in names:
        for path in cow_files(app.pools[name].config.get("dir_path", "")):
            report.removed.append((path, fileops.allocated_bytes(path)))
            if not dry_run:
                fileops.remove(path)
    return report


def main(argv: list[str] | None = None) -> int:
    """``qubes-pool-migrate``: move file pools to the file-reflink driver."""
    parser = argparse.ArgumentParser(
        prog="qubes-pool-migrate",
        description="Move file pools to the file-reflink driver (qubesd must be stopped).")
    parser.add_argument("--base-dir", help="installation directory (default: $QUBES_BASE_DIR, "
                                           "else /var/lib/qubes)")
    parser.add_argument("--pool", action="append", dest="pools", metavar="NAME",
                        help="pool to migrate (repeatable; default: every file pool)")
    parser.add_argument("--setup-check", choices=("yes", "no"), default="yes",
                        help="'no' migrates even where the filesystem cannot reflink")
    parser.add_argument("--runtime", default=None,
                        help="runtime asked which VMs run (default: xen on Xen, else offline)")
    parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
    args = parser.parse_args(argv)

    from qubes_core.app import Qubes
    from qubes_core.backend import make_runtime

    runtime_name = args.runtime or ("xen" if os.path.exists("/proc/xen") else "offline")
    try:
        runtime = make_runtime(runtime_name)
        store = paths.resolve(args.base_dir).qubes_xml
        with Qubes(store, runtime=runtime) as app:
            report = migrate(app, args.pools, setup_check=args.setup_check == "yes",
                             dry_run=args.dry_run)
    except exc.QubesException as error:
        print(f"qubes-pool-migrate: {error}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
