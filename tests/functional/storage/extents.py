"""FIEMAP: which extents of a file are shared with another file (reflinks)."""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
HEADER = struct.Struct("=QQLLLL")
EXTENT = struct.Struct("=QQQQQLLLL")
BATCH = 256


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int

    @property
    def shared(self) -> bool:
        return bool(self.flags & FIEMAP_EXTENT_SHARED)


def extents(path: str | os.PathLike[str]) -> list[Extent]:
    """Every data extent of ``path`` (holes are absent), as the filesystem reports it."""
    found: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while True:
            request = bytearray(HEADER.size + BATCH * EXTENT.size)
            HEADER.pack_into(request, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, BATCH, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
            mapped = HEADER.unpack_from(request, 0)[3]
            if mapped == 0:
                return found
            last = False
            for i in range(mapped):
                fields = EXTENT.unpack_from(request, HEADER.size + i * EXTENT.size)
                extent = Extent(fields[0], fields[1], fields[2], fields[5])
                found.append(extent)
                last = bool(extent.flags & FIEMAP_EXTENT_LAST)
            if last:
                return found
            start = found[-1].logical + found[-1].length
    finally:
        os.close(fd)


def shared_bytes(path: str | os.PathLike[str]) -> int:
    return sum(e.length for e in extents(path) if e.shared)


def data_bytes(path: str | os.PathLike[str]) -> int:
    return sum(e.length for e in extents(path))


def physical_ranges(path: str | os.PathLike[str]) -> set[tuple[int, int]]:
    return {(e.physical, e.length) for e in extents(path)}
