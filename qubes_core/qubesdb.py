"""An in-memory QubesDB: the per-VM key/value tree that a VM's agents read.

Every VM has one in qubesd (``vm.qdb``, reset when the VM starts): the services
and firewall extensions write into it. A runtime that has a real QubesDB daemon
per VM gives the VM a store with the same interface (read, write, rm of a key or
a ``/prefix/``, list, multiread) instead.
"""

from __future__ import annotations

import re

KEY_RE = re.compile(r"^/[a-zA-Z0-9_.:/-]{0,63}$")
MAX_VALUE = 3072


class QubesDBError(Exception):
    """Raised for a key QubesDB cannot hold or a value over 3072 bytes."""


class InMemoryQubesDB:
    """The QubesDB tree of one VM as qubesd keeps it; keys (64 characters) and values
    (3072 bytes) are limited as in QubesDB.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    @staticmethod
    def _check_key(key: str) -> None:
        if not KEY_RE.match(key) or "//" in key:
            raise QubesDBError(f"invalid QubesDB key {key!r}")

    def write(self, key: str, value: str | bytes) -> None:
        self._check_key(key)
        data = value.encode() if isinstance(value, str) else bytes(value)
        if len(data) > MAX_VALUE:
            raise QubesDBError(f"value for {key!r} is longer than {MAX_VALUE} bytes")
        self._data[key] = data

    def read(self, key: str) -> bytes | None:
        return self._data.get(key)

    def rm(self, key: str) -> None:
        """Remove a key, or every key under it when it ends with ``/``."""
        if key.endswith("/"):
            for name in [k for k in self._data if k.startswith(key)]:
                del self._data[name]
        else:
            self._data.pop(key, None)

    def list(self, prefix: str = "/") -> list[str]:
        return sorted(k for k in self._data if k.startswith(prefix))

    def multiread(self, prefix: str = "/") -> dict[str, bytes]:
        return {k: self._data[k] for k in self.list(prefix)}
