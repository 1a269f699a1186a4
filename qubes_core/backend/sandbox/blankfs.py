"""Empty ext4 file systems for a VM's volatile volume (new at every start) and for a
private volume's first start: clones of a cached empty image, not a mkfs at each start.

Invariant: a cached image is whole or absent. It is made once per size, label and
journal choice by ``mkfs.ext4`` under a temporary name and renamed into place, so an
interrupted making leaves only a temporary file that the next making replaces. A
volume gets its file system as :func:`qubes_core.storage.fileops.copy_file` of the
cached image (a reflink where the file system can: no data written, no process
started; a sparse copy elsewhere), which replaces the volume's image by a rename.
Why: a DispVM runs one call, and a mkfs process per start (plus the writes through
the loop device that the kernel does for it) was a large share of its CPU time.

The cache lives beside the pool's images (so that a reflink is possible), in
:data:`CACHE_DIR`; all its images are alike, so that the clones share a file system
UUID is harmless: each is mounted only in its own VM's mount namespace.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from qubes_core.backend.sandbox.keeper import has_ext_fs
from qubes_core.storage import fileops

CACHE_DIR = ".sandbox-empty-ext4"
# Bumped when the mkfs options change, so that an older cached image is not taken.
FORMAT = 1


class BlankFsError(Exception):
    """An empty file system could not be made; the text says why."""


def make_fs(image: str, label: str, journal: bool) -> None:
    """A new, empty ext4 file system on ``image`` (no journal: for one that is new at
    every start, whose content no crash has to keep)."""
    result = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-O",
         "has_journal" if journal else "^has_journal",
         "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", image],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BlankFsError(f"mkfs.ext4 failed: {detail[-1] if detail else result.returncode}")


def cached_image(cache_dir: Path, size: int, label: str, journal: bool) -> Path:
    """The cached empty file system of ``size`` bytes (made on first use)."""
    path = cache_dir / f"{label}-{'journal' if journal else 'nojournal'}-{size}-v{FORMAT}.img"
    if path.exists():
        return path
    fileops.make_dirs(cache_dir)
    temp = fileops.temp_name(path)
    try:
        with open(temp, "xb") as file:
            file.truncate(size)
        make_fs(temp, label, journal)  # which syncs the image before it exits
        fileops.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return path


def give_empty_fs(image: str, cache_dir: Path, label: str, journal: bool) -> None:
    """Replace ``image`` by an empty ext4 file system of its size."""
    size = os.stat(image).st_size
    fileops.copy_file(cached_image(cache_dir, size, label, journal), image, sync=False)


def prepare(private: str | None, volatile: str | None, cache_dir: Path) -> None:
    """File systems for a start: a new volatile one, a private one if it has none yet."""
    if private and not has_ext_fs(private):
        give_empty_fs(private, cache_dir, "private", journal=True)
    if volatile:
        give_empty_fs(volatile, cache_dir, "volatile", journal=False)
