"""The ``file-reflink`` driver: volumes are image files, snapshots are reflinks.

Layout, with ``P = dir_path/vid`` (``appvms/VM/VOL`` or ``vm-templates/VM/VOL``)::

    P.img                     the clean (committed) image
    P-dirty.img               the image a running VM uses
    P-precache.img            a ready reflink of the clean image, taken by the next start
    P-import.img              an import in progress
    P.img.N@YYYY-MM-DDTHH:MM:SSZ   revision N (timestamp: the clean image's mtime, UTC)
    *~RANDOM                  temporary files, fsynced then renamed

A clean image is never written in place: it is only ever replaced by a rename,
so hard links to it (revisions, the snapshots of AppVMs) keep the contents they
had. That is what makes a revision or a snapshot start cost one link, and what
makes every operation crash-safe: an interrupted one leaves the old clean image,
plus ``~`` leftovers that the next use of the volume removes (and logs).

On a filesystem without reflink support (ext4), every copy is a sparse copy.
The option ``setup_check`` says what adding a pool does about that:

``yes`` (the default)
    probe the pool's own directory with a real FICLONE and refuse the pool
    where it fails; the error names the two ways out below.
``no``
    no probe: accept sparse copies (slow, and every snapshot uses disk space).
``auto``
    probe, and take whichever works: the outcome is what qubes.xml records
    (``yes``, or ``no`` with a warning). For installations made on any
    filesystem (tests, ``qubesd --create``, ``make demo``).

A failed setup removes the directories it created, never one that existed.
Sizes are checked against what the filesystem can hold in one file before
any image is touched (ext4 stops at 16 TiB with 4 KiB blocks).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import glob
import logging
import os
import re
from typing import Any

from qubes_core import exc
from qubes_core.storage import (
    FALSE_OPTIONS,
    TRUE_OPTIONS,
    Pool,
    StoragePoolException,
    StorageVM,
    Volume,
    check_vid,
    fileops,
)

log = logging.getLogger("qubes.storage.reflink")

PRECACHE_XATTR = "user.qubes.precache-of"
SNAPSHOT_XATTR = "user.qubes.snapshot-of"
REVISION_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _mountinfo_path(field: bytes) -> str:
    """A path field of mountinfo: space, tab, newline and backslash come as octal escapes
    (``\\040``); every other byte is the path's own (UTF-8 or not)."""
    raw = re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8)]), field)
    return os.fsdecode(raw)


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """Type of the filesystem ``path`` is on (``ext4``, ``xfs``, ...), from mountinfo."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open(mountinfo, "rb") as mounts:
        for line in mounts:
            fields = line.split()
            mount_point = _mountinfo_path(fields[4])
            sep = fields.index(b"-")
            if (real == mount_point or real.startswith(mount_point.rstrip("/") + "/")) \
                    and len(mount_point) >= len(best):
                best, fstype = mount_point, os.fsdecode(fields[sep + 1])
    return fstype


def identity(path: str) -> str:
    """What identifies one version of an image: device, inode, mtime and size."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


class FileReflinkPool(Pool):
    """A directory of image files on a filesystem that can share extents (XFS, btrfs)."""

    driver = "file-reflink"
    # Whether snapshots try FICLONE first (the ``file`` driver never does).
    reflink = True
    known_options = {"dir_path": "", "setup_check": "yes", "revisions_to_keep": "1",
                     "ephemeral_volatile": "False"}

    @property
    def dir_path(self) -> str:
        """The pool's directory."""
        path = self.config.get("dir_path", "")
        if not path or not os.path.isabs(path):
            raise StoragePoolException(
                f"pool {self.name!r}: dir_path must be an absolute directory, not {path!r}")
        return os.path.normpath(path)

    @property
    def setup_check(self) -> str:
        """``yes``, ``no`` or ``auto`` (see the module docstring)."""
        value = str(self.config.get("setup_check", "yes")).strip().lower()
        if value in TRUE_OPTIONS:
            return "yes"
        if value in FALSE_OPTIONS:
            return "no"
        if value == "auto":
            return "auto"
        raise exc.QubesValueError(
            f"pool {self.name!r}: option setup_check={value!r} is not yes, no or auto")

    def setup(self) -> None:
        """Create the directory and check that its filesystem can reflink.

        The check is a real FICLONE of a probe file in the pool's own directory.
        On a filesystem without reflink support the pool is refused unless
        ``setup_check=no`` accepts slow full copies; ``setup_check=auto`` takes
        what the filesystem offers and records the outcome. A refused pool
        leaves no directory it created behind.
        """
        dir_path = self.dir_path
        self.revisions_to_keep = self.config.get("revisions_to_keep", "1")
        setup_check = self.setup_check
        with fileops.new_dirs(dir_path):
            if self.reflink and setup_check != "no":
                self._check_reflink(dir_path, setup_check)

    def _check_reflink(self, dir_path: str, setup_check: str) -> None:
        supported, reason = fileops.reflink_supported(dir_path)
        if setup_check == "auto":
            self.config["setup_check"] = "yes" if supported else "no"
        if supported:
            return
        fstype = filesystem_type(dir_path)
        if setup_check == "auto":
            log.warning("pool %s: the %s filesystem of %s cannot reflink (%s); snapshots "
                        "will be full sparse copies (setup_check=no recorded)",
                        self.name, fstype, dir_path, reason)
            return
        raise StoragePoolException(
            f"pool {self.name!r}: the {fstype} filesystem of {dir_path} cannot reflink "
            f"({reason}); use XFS (reflink=1) or btrfs, or pass setup_check=no to accept "
            "slow full copies that use more disk space (setup_check=auto: reflink where "
            "the filesystem can, else such copies)"
        )

    def check_file_size(self, vid: str, what: str, size: int) -> None:
        """Refuse ``size`` if the pool's filesystem cannot hold a file that large."""
        if fileops.file_size_possible(self.dir_path, size):
            return
        raise StoragePoolException(
            f"cannot {what} volume {vid}: {size} bytes is more than the "
            f"{filesystem_type(self.dir_path)} filesystem of pool {self.name} "
            f"({self.dir_path}) can hold in one file")

    def _statvfs(self) -> os.statvfs_result | None:
        try:
            return os.statvfs(self.dir_path)
        except (OSError, StoragePoolException):
            return None

    @property
    def size(self) -> int | None:
        """Size of the filesystem the pool is on, in bytes."""
        st = self._statvfs()
        return None if st is None else st.f_blocks * st.f_frsize

    @property
    def usage(self) -> int | None:
        """Bytes the image holds (its allocated blocks)."""
        st = self._statvfs()
        return None if st is None else (st.f_blocks - st.f_bfree) * st.f_frsize

    def init_volume(self, vm: StorageVM, config: dict[str, Any],
                    source: Volume | None = None) -> FileReflinkVolume:
        """The volume of ``vm`` this pool holds for ``config``."""
        return self.volume_class(self, config, source)

    def get_volume(self, vid: str) -> FileReflinkVolume:
        """The volume ``vid`` of this pool."""
        check_vid(vid)
        config = {"name": os.path.basename(vid), "vid": vid, "save_on_stop": True}
        path = os.path.join(self.dir_path, vid + ".img")
        with contextlib.suppress(FileNotFoundError):
            config["size"] = os.stat(path).st_size
        return self.volume_class(self, config)

    volume_class: type[FileReflinkVolume]


class FileReflinkVolume(Volume):
    """A volume of a :class:`FileReflinkPool`."""

    pool: FileReflinkPool
    # Whether the last start kept the uncommitted image of an unclean stop.
    resumed = False

    # --- paths --------------------------------------------------------------

    @property
    def _base(self) -> str:
        return os.path.join(self.pool.dir_path, self.vid)

    @property
    def path_clean(self) -> str:
        """The committed image (``P.img``)."""
        return self._base + ".img"

    @property
    def path_dirty(self) -> str:
        """The image a running VM writes (``P-dirty.img``)."""
        return self._base + "-dirty.img"

    @property
    def path_precache(self) -> str:
        """The clone made ahead for the next start (``P-precache.img``)."""
        return self._base + "-precache.img"

    @property
    def path_import(self) -> str:
        """The image an import writes (``P-import.img``)."""
        return self._base + "-import.img"

    def path_revision(self, number: int | str, timestamp: str) -> str:
        """The file of revision ``number`` made at ``timestamp``."""
        return f"{self.path_clean}.{number}@{timestamp}"

    def _images(self) -> list[str]:
        """Every file of this volume but revisions."""
        return [self.path_clean, self.path_dirty, self.path_precache, self.path_import]

    def _copy(self, src: str, dst: str, size: int | None = None, sync: bool = True) -> None:
        fileops.copy_file(src, dst, reflink=self.pool.reflink, size=size, sync=sync)

    def _sync_dir(self) -> None:
        """Make the renames and links of an operation durable (one fsync for all of them,
        shared with the volumes that commit in the same directory at the same time)."""
        fileops.fsync_dir_shared(os.path.dirname(self.path_clean))

    # --- state --------------------------------------------------------------

    def is_dirty(self) -> bool:
        """Whether a dirty image exists (the VM runs, or its stop was not handled)."""
        return self.save_on_stop and os.path.exists(self.path_dirty)

    def in_use(self) -> bool:
        """Whether the volume is started."""
        return os.path.exists(self.path_dirty)

    def importing(self) -> bool:
        """Whether an import is in progress."""
        return os.path.exists(self.path_import)

    def is_outdated(self) -> bool:
        """Whether the source changed since this snapshot was taken."""
        if not self.snap_on_start or self.source is None:
            return False
        try:
            mine = os.stat(self.path_clean)
            source_path = self.source.export_path()
            theirs = os.stat(source_path)
        except (FileNotFoundError, StoragePoolException):
            return False
        if mine.st_dev == theirs.st_dev and mine.st_nlink > 1:
            return mine.st_ino != theirs.st_ino
        try:
            recorded = os.getxattr(self.path_clean, SNAPSHOT_XATTR).decode()
        except OSError:
            return True
        return recorded != identity(source_path)

    @property
    def revisions(self) -> dict[str, str]:
        """The kept revisions, by number: their timestamps."""
        prefix = self.path_clean + "."
        found = []
        for path in glob.glob(glob.escape(prefix) + "*@*Z"):
            number, _, timestamp = path[len(prefix):].partition("@")
            if number.isdigit():
                found.append((int(number), timestamp))
        return {str(number): timestamp for number, timestamp in sorted(found)}

    def _revision_paths(self) -> list[tuple[int, str]]:
        return [(int(number), self.path_revision(number, timestamp))
                for number, timestamp in self.revisions.items()]

    @property
    def usage(self) -> int:
        """Bytes the image holds (its allocated blocks)."""
        if os.path.exists(self.path_dirty):
            return fileops.allocated_bytes(self.path_dirty)
        if self.save_on_stop:
            return fileops.allocated_bytes(self.path_clean)
        return 0

    def block_device(self) -> str:
        """The image the VM gets as its disk."""
        return self.path_dirty

    def export_path(self) -> str:
        """A path from which the volume's committed data can be read."""
        if self.snap_on_start and self.source is not None:
            return self.source.export_path()
        if not os.path.exists(self.path_clean):
            raise StoragePoolException(f"volume {self.vid} has no image ({self.path_clean})")
        return self.path_clean

    # --- housekeeping -------------------------------------------------------

    def _remove_leftovers(self) -> None:
        """Remove what an interrupted operation left: ``~`` files and a stale precache."""
        for path in self._images():
            fileops.remove_temp_files(path)
        if os.path.exists(self.path_precache) and not self._precache_valid():
            log.info("Removing stale precache of %s", self.vid)
            fileops.remove(self.path_precache, sync=False)

    def _precache_valid(self) -> bool:
        """Whether the precache is a whole reflink of the current clean image.

        The xattr names the clean image it was made of. Its size is checked too:
        btrfs can bring a precache back from a power loss with its xattr but
        empty, when another fsync logged its name before its data (see fileops).
        """
        try:
            recorded = os.getxattr(self.path_precache, PRECACHE_XATTR).decode()
            return (recorded == identity(self.path_clean)
                    and os.stat(self.path_precache).st_size
                    == os.stat(self.path_clean).st_size)
        except OSError:
            return False

    def _make_precache(self) -> None:
        """Reflink the clean image to ``P-precache.img`` so the next start is a rename."""
        if not self.pool.reflink or not os.path.exists(self.path_clean):
            return
        tmp = fileops.temp_name(self.path_precache)
        try:
            src_fd = os.open(self.path_clean, os.O_RDONLY)
            try:
                dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    fileops.reflink_fd(src_fd, dst_fd)
                    # No fsync (see fileops): a reflink is ordered before its rename by
                    # the journal, and a precache whose name or xattr a crash loses is
                    # only a precache less (the next start copies, and drops one whose
                    # xattr does not name the current clean image).
                    os.setxattr(dst_fd, PRECACHE_XATTR, identity(self.path_clean).encode())
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
        except OSError as err:
            # No reflink or no xattrs here: starts copy the clean image instead.
            log.debug("no precache for %s: %s", self.vid, err)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return
        log.info("Copied file by reflink: %s -> %s", self.path_clean, tmp)
        fileops.rename(tmp, self.path_precache, sync=False)

    def _remove_all(self) -> None:
        for path in self._images():
            fileops.remove_temp_files(path)
            fileops.remove(path, sync=False)
        for _number, path in self._revision_paths():
            fileops.remove(path, sync=False)
        # The VM's other volumes, removed at the same time, may remove the directory
        # (once it is empty) before this fsync: then there is nothing left to sync.
        with contextlib.suppress(FileNotFoundError):
            self._sync_dir()

    # --- revisions ----------------------------------------------------------

    def _add_revision(self) -> None:
        """Keep the current clean image as the next revision (a hard link: no copy)."""
        if self.revisions_to_keep == 0 or not os.path.exists(self.path_clean):
            return
        numbers = [number for number, _path in self._revision_paths()]
        mtime = os.stat(self.path_clean).st_mtime
        timestamp = datetime.datetime.fromtimestamp(mtime, datetime.UTC).strftime(
            REVISION_TIME_FORMAT)
        fileops.link_new(self.path_clean, self.path_revision(max(numbers, default=0) + 1,
                                                             timestamp), sync=False)

    def _prune_revisions(self) -> None:
        keep = self.revisions_to_keep
        paths = self._revision_paths()
        for _number, path in paths[:max(0, len(paths) - keep)]:
            fileops.remove(path, sync=False)

    def _commit(self, path_from: str) -> None:
        """Make ``path_from`` the clean image; the old one becomes a revision.

        Two syncs, each needed: the new data is made durable (fdatasync) before
        the rename can reach the disk, since no filesystem here orders them by
        itself (see fileops); then one directory fsync makes the precache removal,
        revision link and rename durable together. Pruning old revisions comes
        after it: a prune that a crash loses brings back a revision the next
        commit prunes again, and its unlinks stay out of the synced work. A
        precache that survives a crash is not valid for the new clean image and
        is dropped on the next use.
        """
        fileops.fdatasync_path(path_from)
        fileops.remove(self.path_precache, sync=False)
        self._add_revision()
        fileops.rename(path_from, self.path_clean, sync=False)
        self._sync_dir()
        self._prune_revisions()

    # --- operations ---------------------------------------------------------

    def do_create(self) -> None:
        """Create an empty sparse image of the volume's size (or a snapshot of its source)."""
        makes_image = self.save_on_stop and not self.snap_on_start
        if makes_image:
            self.pool.check_file_size(self.vid, "create", self.size)
        self._remove_all()
        fileops.make_dirs(os.path.dirname(self.path_clean))
        if makes_image:
            fileops.create_sparse_file(self.path_clean, self.size)

    def do_remove(self) -> None:
        """Remove every file of the volume, revisions included."""
        self._remove_all()
        with contextlib.suppress(OSError):  # the VM's directory, once it is empty
            os.rmdir(os.path.dirname(self.path_clean))

    def do_verify(self) -> bool:
        """Whether the images needed for a start are there; else an error naming the missing one."""
        if self.snap_on_start:
            if self.source is None:
                raise StoragePoolException(
                    f"volume {self.vid} is a snapshot but has no source volume")
            path = self.source.export_path()
            if not os.path.exists(path):
                raise StoragePoolException(
                    f"volume {self.vid}: its source {self.source.vid} has no image ({path})")
        elif self.save_on_stop and not (os.path.exists(self.path_clean)
                                        or os.path.exists(self.path_dirty)):
            raise StoragePoolException(f"volume {self.vid} is missing its image "
                                       f"({self.path_clean})")
        return True

    def do_start(self) -> None:
        """Make the image the VM writes: a clone of the source or of the committed image."""
        self._remove_leftovers()
        fileops.make_dirs(os.path.dirname(self.path_clean))
        self.resumed = self.is_dirty() and not self._dirty_lost()
        if self.resumed:
            log.info("Starting %s on its uncommitted image %s (not cleanly stopped)",
                     self.vid, self.path_dirty)
            return
        if self.snap_on_start:  # remade at every start: no fsync needed
            self._link_source()
            self._copy(self.path_clean, self.path_dirty, size=self.size, sync=False)
        elif self.save_on_stop:
            if os.path.exists(self.path_precache):
                # No directory fsync: the VM's first flush of the image makes its new
                # name durable; were it lost, the precache is that same data again.
                fileops.rename(self.path_precache, self.path_dirty, sync=False)
                if os.stat(self.path_dirty).st_size < self.size:
                    os.truncate(self.path_dirty, self.size)
            else:
                self._copy(self.path_clean, self.path_dirty, size=self.size)
        else:
            fileops.create_sparse_file(self.path_dirty, self.size, sync=False)

    def _dirty_lost(self) -> bool:
        """Whether a crash emptied the dirty image before its VM flushed anything.

        The dirty image is made at least as large as the volume (and a resize of a
        running VM grows it durably before the size is recorded), and a VM's
        flush makes its size durable. btrfs can bring a reflinked file back
        with its new name but size 0 (see fileops) when another fsync logged the
        name first: resuming on that (and committing it at the stop) would lose
        the volume. Nothing in it was ever flushed, so it is dropped instead.
        """
        size = os.stat(self.path_dirty).st_size
        if size >= self.size:
            return False
        log.warning("Removing %s: %d bytes, less than the volume's %d: a crash lost it "
                    "before its VM flushed anything; starting from the clean image",
                    self.path_dirty, size, self.size)
        fileops.remove(self.path_dirty, sync=False)
        return True

    def _link_source(self) -> None:
        """Make ``P.img`` the source's clean image: a hard link, or a copy across mounts."""
        if self.source is None:
            raise StoragePoolException(f"volume {self.vid} is a snapshot but has no source")
        source_path = self.source.export_path()
        try:
            fileops.link(source_path, self.path_clean, sync=False)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            fileops.remove_temp_files(self.path_clean)
            self._copy(source_path, self.path_clean, sync=False)
            os.setxattr(self.path_clean, SNAPSHOT_XATTR, identity(source_path).encode())

    def do_stop(self) -> None:
        """Commit the dirty image (keeping revisions) or drop it."""
        if self.save_on_stop:
            if not os.path.exists(self.path_dirty):
                log.warning("volume %s was not started; nothing to commit", self.vid)
                return
            self._commit(self.path_dirty)
            self._make_precache()
            return
        fileops.remove(self.path_dirty, sync=False)
        if self.snap_on_start:
            fileops.remove(self.path_clean, sync=False)

    def do_abort_start(self) -> None:
        """Undo a start that failed half-way: drop what it made."""
        if self.save_on_stop:
            # The VM never ran: the dirty image is a copy of the clean one, unless the
            # start resumed the changes of a run that was not cleanly stopped.
            if not self.resumed:
                fileops.remove(self.path_dirty, sync=False)
            return
        self.do_stop()

    def _refuse_in_use(self, what: str) -> None:
        if self.in_use():
            raise StoragePoolException(
                f"cannot {what} volume {self.vid}: it is in use (or its VM was not cleanly "
                "stopped); stop the VM first")

    def _refuse_snapshot(self, what: str) -> None:
        if self.snap_on_start or not self.save_on_stop:
            kind = "a snapshot of another volume" if self.snap_on_start else "not persistent"
            raise StoragePoolException(f"cannot {what} volume {self.vid}: it is {kind}")

    def do_revert(self, revision: str | None) -> None:
        """Make revision ``revision`` (the newest when None) the committed image again."""
        self._refuse_in_use("revert")
        revisions = self.revisions
        if not revisions:
            raise StoragePoolException(f"volume {self.vid} has no revisions to revert to")
        chosen = str(revision) if revision not in (None, "") else list(revisions)[-1]
        if chosen not in revisions:
            raise StoragePoolException(
                f"volume {self.vid} has no revision {chosen!r} (kept: "
                f"{', '.join(revisions)})")
        path = self.path_revision(chosen, revisions[chosen])
        self._remove_leftovers()
        fileops.remove(self.path_precache, sync=False)
        self._add_revision()  # the current image stays reachable: a revert can be undone
        fileops.rename(path, self.path_clean, sync=False)
        self._sync_dir()

    def do_resize(self, size: int) -> None:
        """Grow the image to ``size`` bytes (the running one too)."""
        current = self.size
        if size < current:
            raise StoragePoolException(
                f"cannot shrink volume {self.vid} from {current} to {size} bytes: shrinking "
                "is not supported")
        if size == current:
            return
        self.pool.check_file_size(self.vid, "resize", size)
        if os.path.exists(self.path_dirty):
            # The running VM's own image, grown durably before the size is recorded
            # (a start takes a dirty image smaller than the volume for a lost one).
            os.truncate(self.path_dirty, size)
            fileops.fdatasync_path(self.path_dirty)
            log.info("Grew file in place: %s to %d bytes", self.path_dirty, size)
        elif self.save_on_stop and not self.snap_on_start and os.path.exists(self.path_clean):
            self._remove_leftovers()
            fileops.remove(self.path_precache, sync=False)
            fileops.resize_file(self.path_clean, size, reflink=self.pool.reflink)
        self.config["size"] = size

    def do_import_data(self, size: int) -> str:
        """Begin an import of ``size`` bytes into a new image; its path."""
        self._refuse_snapshot("import into")
        self._refuse_in_use("import into")
        self.pool.check_file_size(self.vid, "import into", size)
        fileops.remove_temp_files(self.path_import)
        fileops.remove(self.path_import, sync=False)
        fileops.make_dirs(os.path.dirname(self.path_import))
        fileops.create_sparse_file(self.path_import, size, sync=False)
        return self.path_import

    def do_import_data_end(self, success: bool) -> None:
        """Commit the imported image, or drop it."""
        if not os.path.exists(self.path_import):
            raise StoragePoolException(f"volume {self.vid} has no import in progress")
        if not success:
            fileops.remove(self.path_import)
            return
        size = os.stat(self.path_import).st_size
        self._commit(self.path_import)
        self.config["size"] = size

    def do_import_volume(self, src: Volume, path: str) -> None:
        """Take the committed data of ``src`` as a new revision."""
        self._refuse_snapshot("import into")
        self._refuse_in_use("import into")
        fileops.remove_temp_files(self.path_import)
        fileops.make_dirs(os.path.dirname(self.path_import))
        size = max(self.size, src.size, os.stat(path).st_size)
        self._copy(path, self.path_import, size=size, sync=False)  # the commit fsyncs it
        self._commit(self.path_import)
        self.config["size"] = size


FileReflinkPool.volume_class = FileReflinkVolume
