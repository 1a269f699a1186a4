"""Where an installation's qubesd sockets are, as strings: what a client tool needs first.

The rule: ``--base-dir``, else ``$QUBES_BASE_DIR``, relocates the installation under
that directory (its sockets in ``BASE/run``); without either they are Qubes' own, in
``/var/run``. :mod:`qubes_core.paths` builds every other location on this rule, so
it has one owner; it lives apart, with no import but :mod:`os`, so that a tool finds
qubesd without loading :mod:`pathlib` (a tool's start-up is most of its cost).
"""

from __future__ import annotations

import os

ENV_VAR = "QUBES_BASE_DIR"
PRODUCTION_RUN_DIR = "/var/run"
RUN_SUBDIR = "run"
ADMIN_SOCKET = "qubesd.sock"


def chosen_base_dir(base_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The base directory named by ``base_dir``, else ``$QUBES_BASE_DIR``; None: production."""
    chosen = os.fspath(base_dir) if base_dir else os.environ.get(ENV_VAR)
    return chosen or None


def admin_socket(base_dir: str | os.PathLike[str] | None = None) -> str:
    """The admin socket of the installation named as :func:`chosen_base_dir` says
    (absolute, as :func:`qubes_core.paths.resolve` gives it)."""
    chosen = chosen_base_dir(base_dir)
    if chosen is None:
        return os.path.join(PRODUCTION_RUN_DIR, ADMIN_SOCKET)
    return os.path.join(os.getcwd(), chosen, RUN_SUBDIR, ADMIN_SOCKET)
