"""Where one installation keeps its files.

Production follows Qubes (``/var/lib/qubes``, ``/var/run/qubesd.sock``,
``/etc/qubes/policy.d``, ``/etc/qubes-rpc``). A base directory given with
``--base-dir`` or ``QUBES_BASE_DIR`` relocates all of them under itself, for
local use and tests; the choice of the directory and the place of the sockets
are :mod:`qubes_core.sockets`' (which a client tool loads instead of this module).
It keeps to light imports (``Paths`` is a plain class with slots, neither a
``typing.NamedTuple`` nor a dataclass, so that loading it does not load ``typing``).
"""

from __future__ import annotations

import os
from pathlib import Path

from qubes_core import sockets

PRODUCTION_BASE = Path("/var/lib/qubes")
ENV_VAR = sockets.ENV_VAR


class Paths:
    """The files of one installation: all under ``base_dir``, or Qubes' own places when
    ``production``.
    """

    __slots__ = ("base_dir", "production")

    def __init__(self, base_dir: Path, production: bool = False):
        self.base_dir = base_dir
        self.production = production

    def __repr__(self) -> str:
        return f"Paths({str(self.base_dir)!r}, production={self.production})"

    @property
    def qubes_xml(self) -> Path:
        return self.base_dir / "qubes.xml"

    @property
    def run_dir(self) -> Path:
        if self.production:
            return Path(sockets.PRODUCTION_RUN_DIR)
        return self.base_dir / sockets.RUN_SUBDIR

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / sockets.ADMIN_SOCKET

    @property
    def internal_socket(self) -> Path:
        return self.run_dir / "qubesd.internal.sock"

    @property
    def misc_socket(self) -> Path:
        return self.run_dir / "qubesd.misc.sock"

    @property
    def qrexec_socket(self) -> Path:
        """dom0's qrexec socket (the sandbox runtime's router serves it, ``qvm-run`` calls)."""
        return self.run_dir / "qrexec.sock"

    @property
    def etc_dir(self) -> Path:
        return Path("/etc") if self.production else self.base_dir / "etc"

    @property
    def policy_dir(self) -> Path:
        return self.etc_dir / "qubes" / "policy.d"

    @property
    def rpc_dir(self) -> Path:
        return self.etc_dir / "qubes-rpc"

    @property
    def log_dir(self) -> Path:
        return Path("/var/log/qubes") if self.production else self.base_dir / "log"


def installed_at(base_dir: Path) -> Paths:
    """The installation whose qubes.xml lies in ``base_dir`` (Qubes' own places when that
    is Qubes' own directory)."""
    return Paths(base_dir, production=base_dir == PRODUCTION_BASE)


def resolve(base_dir: str | os.PathLike[str] | None = None) -> Paths:
    """The installation named by ``base_dir``, else ``$QUBES_BASE_DIR``, else production."""
    chosen = sockets.chosen_base_dir(base_dir)
    if chosen is not None:
        return Paths(Path(chosen).absolute())
    return Paths(PRODUCTION_BASE, production=True)
