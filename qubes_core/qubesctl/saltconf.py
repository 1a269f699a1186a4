"""The Salt configuration qubesctl runs with, and Salt's output formats.

Under a base directory the minion configuration is written on each run to
``BASE/run/salt/minion`` from the Salt tree's own description
(:func:`qubes_core.mgmt.layout.minion_config`), with Salt's cache beside it,
so nothing outside the installation is read or written; on a production
dom0 ``/etc/salt`` is used as Qubes installs it. dom0's ``salt-call``, the
top check and the pillar rendering all read this one configuration.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from qubes_core.paths import Paths

PRODUCTION_CONFIG = Path("/etc/salt")


def config_dir(paths: Paths) -> Path:
    """Where the minion configuration of the installation is (written when relocated)."""
    if paths.production:
        return PRODUCTION_CONFIG
    from qubes_core.mgmt import layout

    root = paths.run_dir / "salt"
    layout.lay_out(paths.base_dir)  # idempotent: creates the tree, links the shipped formulas
    options = layout.minion_config(paths.base_dir, root_dir=root)
    layout.write_minion_config(root / "minion", options)
    return root


def minion_opts(config: Path) -> dict[str, Any]:
    """The minion options as Salt reads them from ``config``."""
    import salt.config

    return salt.config.minion_config(str(config / "minion"))


def salt_program(name: str) -> str:
    """``salt-call`` (or another Salt program) beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (pip install salt)")
    return found


def display(returns: dict[str, Any], function: str, out: str | None, color: bool,
            opts: dict[str, Any]) -> str:
    """Salt's output of ``returns`` in the format the user asked for (highstate for states)."""
    import salt.output

    if out is None:
        out = "highstate" if function.startswith("state.") else "nested"
    if out == "json":
        import json

        return json.dumps(returns, indent=4, sort_keys=True, default=str)
    if out == "quiet":
        return ""
    shown = dict(opts, color=color, force_color=color)
    return salt.output.string_format(returns, out, shown).rstrip("\n")
