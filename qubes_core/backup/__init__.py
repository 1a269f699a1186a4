"""Backups in Qubes' format 4, written by ``admin.backup.Execute`` and read back by
:mod:`qubes_core.backup.restore` (so Qubes' ``qvm-backup-restore`` reads ours and
ours reads a Qubes backup of the same shape).

Invariant: every byte of a backup but the plain header is in a part encrypted and
authenticated with the passphrase (:mod:`.scrypt`), and a restore uses no part it
has not authenticated. The archive is an uncompressed tar of, in this order:

- ``backup-header``: ``key=value`` lines (``version=4``, ``encrypted=True``,
  ``compressed``, ``compression-filter``, ``hmac-algorithm=scrypt``,
  ``backup-id``), and ``backup-header.hmac``: the header encrypted with the
  passphrase prefixed by ``backup-header!``; a restore trusts the header only if
  the two agree.
- ``qubes.xml.000.enc``: a tar holding a copy of qubes.xml in which each VM of the
  backup carries the features ``backup-content=True``, ``backup-path`` (its
  directory in the archive, ``vmQID/``) and ``backup-size``.
- for each VM, ``vmQID/NAME.img.NNN.enc`` per volume saved at stop (``private``,
  and ``root`` of templates and standalones), then its ``firewall.xml`` and
  ``notes.txt``: each file is a tar (sparse, compressed with the filter when
  ``compressed``) cut into parts of at most :data:`CHUNK_SIZE` bytes.

Each part ``P`` (its path in the archive without ``.enc``) is encrypted with the
passphrase prefixed by ``BACKUP_ID!P!``, so a part cannot be swapped for another
one or one of another backup.
"""

from __future__ import annotations

HEADER_FILENAME = "backup-header"
FORMAT_VERSION = 4
CHUNK_SIZE = 100 * 1024 * 1024
DEFAULT_COMPRESSION = "gzip"
# The programs a header may name as its compression filter: run as ``NAME`` and
# ``NAME -d``; nothing else is executed for a backup read from outside.
COMPRESSION_FILTERS = ("gzip", "bzip2", "xz", "zstd")
VM_FILES = ("firewall.xml", "notes.txt")
