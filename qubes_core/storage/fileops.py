"""Crash-safe, logged file operations on volume images.

Every image that becomes visible under its final name was made under a
temporary name next to it (``NAME~RANDOM``), its data made durable, then
renamed, and its directory fsynced: a crash leaves the old or the new file,
never a torn one, plus at worst a ``~`` leftover that the next use removes.
Every copy, rename and remove is logged at INFO on ``qubes.storage.reflink``
so that the journal shows what was done to which file.

What has to reach the disk before a rename, and why (the ordering rules the
whole driver relies on):

- Data written through the page cache (a sparse copy, an imported image, what
  a VM wrote into its dirty image) must be fdatasynced *before* the rename
  that publishes it. Nothing else orders it: XFS writes its log (the rename)
  independently of file data, and btrfs, when a rename replaces an existing
  file, only *starts* writeback of the renamed file's data (the same
  best-effort heuristic as ext4's ``auto_da_alloc``); a transaction commit
  does not wait for it. fdatasync, not fsync: it persists the data and the
  extent metadata needed to read it back, which is all the rename depends on.
- A reflink writes no data: FICLONE first writes back the source's dirty
  pages, then shares extents through metadata updates. On XFS those are log
  transactions, and the log is replayed in order, so a durable rename implies
  the clone before it. Not on btrfs: a directory fsync that logs the new name
  of a file cloned in the running transaction logs that inode only as
  "existing" (size 0, no extents); after a power loss the name is back, the
  file empty (seen on a loop-mounted btrfs, Linux 6.18, every time). So a
  copy that promises durability (``sync``) is fdatasynced before its rename
  also when it is a reflink (on btrfs 2 to 8 ms for an image holding 1 GiB in
  256 extents, against 0.05 ms once the transaction has committed). A reflink
  published without a sync (a precache) is only a cache: see the driver's
  start for what it does with an image a crash emptied that way.
- The directory fsync that makes a rename durable is only taken where the
  operation promises durability (a commit, a revert, a resize), once per
  operation, after all of its renames and links.

Copies are reflinks (ioctl FICLONE) where the filesystem can share extents,
and sparse copies (data segments only, zero blocks skipped) where it cannot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from qubes_core.fsutil import fsync_dir

log = logging.getLogger("qubes.storage.reflink")

FICLONE = 0x40049409  # _IOW(0x94, 9, int), x86_64 and most others
# Errors with which FICLONE says "not here", as opposed to a real I/O error.
NO_REFLINK_ERRNOS = frozenset({errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV,
                               errno.ENOTTY, errno.ENOSYS})
COPY_CHUNK = 4 * 1024 * 1024
_ZEROS = bytes(COPY_CHUNK)
TEMP_SEPARATOR = "~"

PathLike = str | os.PathLike[str]


def temp_name(path: PathLike) -> str:
    """A fresh temporary name next to ``path`` (``path~RANDOM``)."""
    return f"{os.fspath(path)}{TEMP_SEPARATOR}{secrets.token_hex(6)}"


def fsync_path(path: PathLike) -> None:
    """Make the data and metadata of ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fdatasync_path(path: PathLike) -> None:
    """Make the data of ``path`` durable (and what is needed to read it back)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class _SharedSync:
    """One directory's fsyncs, shared by the threads that ask at the same time.

    Volumes of a VM (and of VMs stopping together) commit in parallel threads;
    each needs a directory fsync that *starts after* its own rename. Requests
    that arrive while an fsync runs wait for it to end, then one of them runs
    the next fsync for all of them (a group commit): N concurrent commits in one
    directory cost two fsyncs at most, not N.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.next_round = 0  # number of the next fsync to start
        self.done_round = -1  # number of the last fsync that finished
        self.running = False

    def sync(self, path: str) -> None:
        with self.cond:
            wanted = self.next_round  # an fsync that starts from now on covers us
            while True:
                if self.done_round >= wanted:
                    return
                if not self.running:
                    self.running = True
                    mine = self.next_round
                    self.next_round += 1
                    break
                self.cond.wait()
        synced = False
        try:
            fsync_dir(path)
            synced = True
        finally:
            with self.cond:
                self.running = False
                if synced:  # a failed fsync covers nobody: the waiters run their own
                    self.done_round = mine
                self.cond.notify_all()


_shared_syncs: dict[str, _SharedSync] = {}
_shared_syncs_lock = threading.Lock()


def fsync_dir_shared(path: PathLike) -> None:
    """``fsync_dir``, shared with the threads that ask for the same directory meanwhile."""
    key = os.path.abspath(path)
    with _shared_syncs_lock:
        shared = _shared_syncs.setdefault(key, _SharedSync())
    shared.sync(key)


def make_dirs(path: PathLike) -> list[Path]:
    """Create ``path`` and its parents, fsyncing each parent that got a new entry.

    Returns the directories this call created, outermost first. If it fails
    half-way, it removes those before raising.
    """
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    created: list[Path] = []
    try:
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
            except FileExistsError:  # made by someone else meanwhile: not ours to remove
                continue
            created.append(directory)
            fsync_dir(directory.parent)
    except BaseException:
        remove_new_dirs(created)
        raise
    for directory in created:
        log.info("Created directory: %s", directory)
    return created


def remove_new_dirs(created: list[Path]) -> None:
    """Remove directories a failed operation created (innermost first), if still empty.

    Only ever given what :func:`make_dirs` returned: a directory that existed
    before, or that holds anything now, is never removed.
    """
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError as err:
            log.warning("Keeping directory %s: %s", directory, err)
            return  # its parents are not empty either
        with contextlib.suppress(OSError):
            fsync_dir(directory.parent)
        log.info("Removed directory: %s", directory)


@contextlib.contextmanager
def new_dirs(path: PathLike) -> Iterator[list[Path]]:
    """``make_dirs(path)``, undone if the block raises: for a setup that may be refused."""
    created = make_dirs(path)
    try:
        yield created
    except BaseException:
        remove_new_dirs(created)
        raise


def reflink_fd(src_fd: int, dst_fd: int) -> None:
    """Share all of ``src_fd``'s extents with ``dst_fd`` (raises OSError if impossible)."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def _data_segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the data segments of an open file, holes skipped."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        offset = end


def _data_segments_of(path: PathLike) -> list[tuple[int, int]]:
    """(start, end) of each data segment of the file at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(_data_segments(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def sparse_copy_fd(src_fd: int, dst_fd: int) -> int:
    """Copy data segments of ``src_fd`` into the (empty) ``dst_fd``; return bytes written.

    Holes of the source and all-zero chunks stay holes in the copy. A plain
    read/write loop on purpose: ``copy_file_range`` may itself reflink or fill
    holes, and this is the path taken precisely when sharing is not wanted or
    not possible.
    """
    size = os.fstat(src_fd).st_size
    os.ftruncate(dst_fd, size)
    written = 0
    buffer = bytearray(COPY_CHUNK)
    view = memoryview(buffer)
    for start, end in _data_segments(src_fd, size):
        offset = start
        while offset < end:
            want = min(COPY_CHUNK, end - offset)
            got = os.preadv(src_fd, [view[:want]], offset)
            if got == 0:
                break
            chunk = view[:got]
            # bytearray comparison is a memcmp; a memoryview one is element-wise.
            zero = buffer == _ZEROS if got == COPY_CHUNK else bytes(chunk) == _ZEROS[:got]
            if not zero:
                done = 0
                while done < got:
                    done += os.pwrite(dst_fd, chunk[done:], offset + done)
                written += got
            offset += got
    return written


def clone_fd(src_fd: int, dst_fd: int, *, reflink: bool = True) -> str:
    """Reflink, or sparse-copy when the filesystem cannot; return how it was done."""
    if reflink:
        try:
            reflink_fd(src_fd, dst_fd)
            return "reflink"
        except OSError as err:
            if err.errno not in NO_REFLINK_ERRNOS:
                raise
            how = f"sparse copy ({errno.errorcode.get(err.errno, err.errno)} from FICLONE)"
    else:
        how = "sparse copy"
    os.ftruncate(dst_fd, 0)
    sparse_copy_fd(src_fd, dst_fd)
    return how


def copy_file(src: PathLike, dst: PathLike, *, reflink: bool = True,
              size: int | None = None, sync: bool = True) -> str:
    """Atomically make ``dst`` a copy of ``src`` (grown to ``size`` if larger).

    With ``sync`` the copy is crash-safe and durable: the copy is fdatasynced
    before the rename (a reflink too: btrfs needs it, see the module
    docstring) and the directory is fsynced after it. Without ``sync`` nothing
    is synced: for images a crash makes worthless anyway (a snapshot or a
    volatile image, remade at every start) or that a later commit syncs.
    """
    tmp = temp_name(dst)
    src_fd = os.open(src, os.O_RDONLY)
    try:
        dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            how = clone_fd(src_fd, dst_fd, reflink=reflink)
            if size is not None and size > os.fstat(dst_fd).st_size:
                os.ftruncate(dst_fd, size)
            if sync:
                os.fdatasync(dst_fd)
        except BaseException:
            os.close(dst_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(dst_fd)
    finally:
        os.close(src_fd)
    log.info("Copied file by %s: %s -> %s", how, src, tmp)
    _rename_or_drop(tmp, dst, sync)
    return how


def create_sparse_file(path: PathLike, size: int, *, sync: bool = True) -> None:
    """Atomically create an all-hole file of ``size`` bytes."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    log.info("Created sparse file: %s (%d bytes)", tmp, size)
    _rename_or_drop(tmp, path, sync)


def resize_file(path: PathLike, size: int, *, reflink: bool = True) -> None:
    """Atomically give ``path`` a new size: a grown copy replaces it (links keep the old)."""
    copy_file(path, path, reflink=reflink, size=size)


def rename(src: PathLike, dst: PathLike, *, sync: bool = True) -> None:
    """Rename; with ``sync``, fsync the directory so the rename is durable."""
    os.rename(src, dst)
    if sync:
        fsync_dir(os.path.dirname(os.path.abspath(dst)))
    log.info("Renamed file: %s -> %s", src, dst)


def _rename_or_drop(tmp: str, dst: PathLike, sync: bool = True) -> None:
    """Rename a finished temporary file into place; remove it if that fails."""
    try:
        rename(tmp, dst, sync=sync)
    except BaseException:
        remove(tmp, sync=False)
        raise


def link(src: PathLike, dst: PathLike, *, sync: bool = True) -> None:
    """Make ``dst`` another name of ``src``'s inode, replacing ``dst`` atomically."""
    tmp = temp_name(dst)
    os.link(src, tmp)
    log.info("Linked file: %s -> %s", src, tmp)
    _rename_or_drop(tmp, dst, sync)


def link_new(src: PathLike, dst: PathLike, *, sync: bool = True) -> None:
    """Make ``dst`` (which must not exist) another name of ``src``'s inode."""
    os.link(src, dst)
    if sync:
        fsync_dir(os.path.dirname(os.path.abspath(dst)))
    log.info("Linked file: %s -> %s", src, dst)


def remove(path: PathLike, *, sync: bool = True) -> bool:
    """Remove ``path`` if it exists; return whether it did."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if sync:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    log.info("Removed file: %s", path)
    return True


def remove_temp_files(path: PathLike) -> list[str]:
    """Remove the ``path~*`` leftovers of interrupted writes; return their names."""
    leftovers = sorted(glob.glob(glob.escape(os.fspath(path)) + TEMP_SEPARATOR + "*"))
    for leftover in leftovers:
        log.info("Removing leftover of an interrupted operation: %s", leftover)
        remove(leftover, sync=False)
    return leftovers


def reflink_supported(directory: PathLike) -> tuple[bool, str]:
    """Whether files in ``directory`` can be reflinked, by a real FICLONE of a probe file."""
    probe = temp_name(Path(directory) / ".reflink-probe")
    clone = temp_name(probe)
    try:
        src_fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(src_fd, b"reflink probe\n" * 512)
            os.fsync(src_fd)
            dst_fd = os.open(clone, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                reflink_fd(src_fd, dst_fd)
            except OSError as err:
                if err.errno not in NO_REFLINK_ERRNOS:
                    raise
                return False, f"FICLONE failed: {os.strerror(err.errno)}"
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return True, "FICLONE works"
    finally:
        for name in (clone, probe):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def file_size_possible(directory: PathLike, size: int) -> bool:
    """Whether the filesystem of ``directory`` can hold a file of ``size`` bytes.

    Asked of the filesystem itself: a sparse probe file is grown to ``size``
    (no block is allocated) and removed. ``pathconf`` cannot tell (ext4 says 64
    bits, yet stops at 16 TiB with 4 KiB blocks).
    """
    probe = temp_name(Path(directory) / ".size-probe")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        return True
    except OSError as err:
        if err.errno in (errno.EFBIG, errno.EINVAL):
            return False
        raise
    except OverflowError:
        return False
    finally:
        os.close(fd)
        os.unlink(probe)


def allocated_bytes(path: PathLike) -> int:
    """Bytes the filesystem allocated to ``path`` (0 if it does not exist)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0
