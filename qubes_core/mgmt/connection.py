"""Which installation a management call acts on, and one client per installation.

The base directory comes from, in order: the ``qubes.base_dir`` minion option
(flat, or nested as ``qubes: {base_dir: ...}``), ``$QUBES_BASE_DIR``, else the
production paths. One client is kept per base directory for the life of the
process: a highstate then reuses one connection setup, and when no qubesd
listened the client's embedded qubesd serves every state of the run and stops
when the process exits.

Read replies are reused only within one run of states (:func:`state_run`):
from one state to the next nothing but this client's own writes can change
what it read, as long as no state of another module (``cmd.run`` calling a
``qvm-*`` tool, say) ran in between. Every other caller reads afresh.
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


def client(opts: Mapping[str, Any] | None = None, run: object | None = None) -> Qubes:
    """The process's client of the installation ``opts`` names (started when needed),
    reusing read replies while ``run`` stays the same (see :func:`state_run`)."""
    base_dir = base_dir_from_opts(opts)
    key = base_dir or ""
    app = _clients.get(key)
    if app is None:
        app = _clients[key] = connect(base_dir)
    app.keep_reads(run)
    return app


def state_run(context: dict[str, Any], running: Mapping[str, Any] | None) -> object | None:
    """What names the current stretch of a state run in which reads may be reused.

    ``context`` is the run's ``__context__`` (a new dict per run), ``running`` the
    results so far (``__running__``; None outside a run). The stretch ends when a
    state that is not a ``qvm`` state (or is ``qvm.run``, which acts through
    ``qvm-run``) has run.
    """
    if running is None:
        return None
    run = context.setdefault("qubes.run", object())
    foreign = sum(1 for tag in running
                  if not str(tag).startswith("qvm_|-") or str(tag).endswith("_|-run"))
    return (run, foreign)


def forget(opts: Mapping[str, Any] | None = None) -> None:
    """Drop (and stop, if it started one) the client of that installation."""
    app = _clients.pop(base_dir_from_opts(opts) or "", None)
    if app is not None:
        app.close()
