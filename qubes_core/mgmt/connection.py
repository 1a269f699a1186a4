"""Which installation a management call acts on, and one client per installation.

The base directory comes from, in order: the ``qubes.base_dir`` minion option
(flat, or nested as ``qubes: {base_dir: ...}``), ``$QUBES_BASE_DIR``, else the
production paths. One client is kept per base directory for the life of the
process: a highstate then reuses one connection setup, and when no qubesd
listened the client's embedded qubesd serves every state of the run and stops
when the process exits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from qubes_core.client.app import Qubes, connect

OPTION = "qubes.base_dir"

_clients: dict[str, Qubes] = {}


def base_dir_from_opts(opts: Mapping[str, Any] | None) -> str | None:
    """The base directory a minion's options name, else ``$QUBES_BASE_DIR``, else None."""
    opts = opts or {}
    chosen = opts.get(OPTION)
    nested = opts.get("qubes")
    if not chosen and isinstance(nested, Mapping):
        chosen = nested.get("base_dir")
    return str(chosen) if chosen else os.environ.get("QUBES_BASE_DIR") or None


def client(opts: Mapping[str, Any] | None = None) -> Qubes:
    """The process's client of the installation ``opts`` names (started when needed)."""
    base_dir = base_dir_from_opts(opts)
    key = base_dir or ""
    app = _clients.get(key)
    if app is None:
        app = _clients[key] = connect(base_dir)
    return app


def forget(opts: Mapping[str, Any] | None = None) -> None:
    """Drop (and stop, if it started one) the client of that installation."""
    app = _clients.pop(base_dir_from_opts(opts) or "", None)
    if app is not None:
        app.close()
