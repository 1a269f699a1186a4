"""Admin API client: talks to qubesd over its socket (one connection per call).

``Qubes()`` connects to the installation named by ``base_dir`` (or
``$QUBES_BASE_DIR``, else the production socket); with ``start=True`` it starts
a qubesd for the installation when none listens (``start_on_call=True``: its first
call does), and stops it on ``close()``.
Names are imported lazily so that the fast client stays fast.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing: every tool loads this
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Qubes", "QubesDaemonNoResponseError", "Transport", "connect"]


def __getattr__(name: str) -> Any:
    if name in ("Qubes", "connect"):
        from qubes_core.client import app

        return getattr(app, name)
    if name in ("Transport", "QubesDaemonNoResponseError"):
        from qubes_core.client import transport

        return getattr(transport, name)
    raise AttributeError(name)
