"""The Salt tree of one installation, and the minion configuration that uses it.

Qubes keeps Salt's files in ``/srv/salt`` (states and the ``_tops`` switch),
``/srv/user_salt`` (saltenv ``user``), ``/srv/pillar`` (+ ``/srv/pillar/base``),
``/srv/user_pillar`` and ``/srv/formulas`` (one directory per formula, each a
file root). Under a base directory the same tree is ``BASE/srv/...``, so an
installation used for tests or local work carries its own. :func:`lay_out`
creates the tree (idempotent) and :func:`minion_config` renders the minion
options that read it: the code directories of this project's loader modules,
the ``qubes.base_dir`` option, Qubes' defaults (merge strategy, nodegroups,
``retcode_passthrough``) and the ``qubes`` ext_pillar. ``qubesctl`` and the
tests build on these two functions rather than writing their own config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qubes_core
from qubes_core.paths import resolve

PRODUCTION_SRV = Path("/srv")
NODEGROUPS = {"dom0": "dom0", "vm": "* and not dom0"}


def code_dir() -> Path:
    """The directory holding ``_modules``, ``_states``, ``_pillar``, ``_grains`` and
    ``formulas`` (the source checkout this package was installed from)."""
    return Path(qubes_core.__file__).resolve().parent.parent


@dataclass(frozen=True)
class SaltTree:
    """Where one installation's Salt files are."""

    srv: Path

    @property
    def salt(self) -> Path:
        return self.srv / "salt"

    @property
    def user_salt(self) -> Path:
        return self.srv / "user_salt"

    @property
    def pillar(self) -> Path:
        return self.srv / "pillar"

    @property
    def user_pillar(self) -> Path:
        return self.srv / "user_pillar"

    @property
    def formulas(self) -> Path:
        return self.srv / "formulas"

    @property
    def user_formulas(self) -> Path:
        return self.srv / "user_formulas"

    def tops(self, kind: str = "salt") -> Path:
        """``_tops/base`` of the state tree (``salt``) or the pillar tree (``pillar``)."""
        return (self.salt if kind == "salt" else self.pillar) / "_tops" / "base"

    def formula_roots(self, user: bool = False) -> list[Path]:
        """Each formula directory (``srv/formulas/NAME``), in name order."""
        top = self.user_formulas if user else self.formulas
        if not top.is_dir():
            return []
        return sorted(path for path in top.iterdir() if path.is_dir())


def salt_tree(base_dir: str | os.PathLike[str] | None = None) -> SaltTree:
    """The Salt tree of the installation (``/srv`` for the production one)."""
    paths = resolve(base_dir)
    return SaltTree(PRODUCTION_SRV if paths.production else paths.base_dir / "srv")


def lay_out(base_dir: str | os.PathLike[str] | None = None,
            formulas: dict[str, Path] | None = None) -> SaltTree:
    """Create the tree and link the given formula directories into ``srv/formulas``.

    With no ``formulas``, this project's own ``formulas/`` is linked as
    ``srv/formulas/qubes-core``. The merged top files are (re)written.
    """
    from qubes_core.mgmt import tops

    tree = salt_tree(base_dir)
    for path in (tree.salt, tree.pillar, tree.pillar / "base", tree.formulas, tree.tops("salt"),
                 tree.tops("pillar")):
        path.mkdir(parents=True, exist_ok=True)
    if formulas is None:
        formulas = {"qubes-core": code_dir() / "formulas"}
    for name, source in formulas.items():
        link = tree.formulas / name
        if link.is_symlink() or link.exists():
            if link.resolve() == Path(source).resolve():
                continue
            link.unlink()
        link.symlink_to(Path(source).resolve(), target_is_directory=True)
    tops.write_merged(tree)
    return tree


def minion_config(base_dir: str | os.PathLike[str] | None = None, *, root_dir: Path | None = None,
                  minion_id: str = "dom0", **extra: Any) -> dict[str, Any]:
    """The minion options for the installation (``extra`` overrides any of them)."""
    tree = salt_tree(base_dir)
    code = code_dir()
    paths = resolve(base_dir)
    options: dict[str, Any] = {
        "id": minion_id,
        "file_client": "local",
        "file_roots": {
            "base": [str(tree.salt), *map(str, tree.formula_roots())],
            "user": [str(tree.user_salt), *map(str, tree.formula_roots(user=True))],
        },
        "pillar_roots": {
            "base": [str(tree.pillar), str(tree.pillar / "base")],
            "user": [str(tree.user_pillar)],
        },
        "top_file_merging_strategy": "merge",
        "nodegroups": dict(NODEGROUPS),
        "retcode_passthrough": True,
        "module_dirs": [str(code / "_modules")],
        "states_dirs": [str(code / "_states")],
        "pillar_dirs": [str(code / "_pillar")],
        "grains_dirs": [str(code / "_grains")],
        "ext_pillar": [{"qubes": {}}],
        "state_verbose": True,
    }
    if not paths.production:
        options["qubes.base_dir"] = str(paths.base_dir)
    if root_dir is not None:
        root = Path(root_dir)
        options.update({
            "root_dir": str(root),
            "cachedir": str(root / "cache"),
            "pki_dir": str(root / "pki"),
            "sock_dir": str(root / "sock"),
            "log_file": str(root / "minion.log"),
            "pidfile": str(root / "minion.pid"),
            "conf_file": str(root / "minion"),
        })
    options.update(extra)
    return options


def write_minion_config(path: Path, options: dict[str, Any]) -> Path:
    """Write ``options`` as a YAML minion config file."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(options, default_flow_style=False, sort_keys=True))
    return path
