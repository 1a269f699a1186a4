"""The tops switch ("topd"): which formulas' top files a highstate applies.

A formula ships ``NAME.top`` beside its states; ``enable("qvm.sys-net")``
links ``_tops/base/qvm.sys-net.top`` to the formula's ``qvm/sys-net.top``
(under ``srv/salt``, or ``srv/pillar`` with ``pillar=True``), ``disable``
removes the link. ``top.sls`` of the tree is the merge of the enabled tops;
it is rewritten on every switch, as plain YAML, so that a salt-master that
serves the tree (and does not load this project's modules) applies the same
highstate as a local ``salt-call``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from qubes_core.mgmt.errors import UsageError
from qubes_core.mgmt.layout import SaltTree

HEADER = ("# Written by top.enable / top.disable: the merge of every enabled top in\n"
          "# _tops/base/*.top. Enable a formula's top with `top.enable NAME`.\n")


def _roots(tree: SaltTree, kind: str) -> list[Path]:
    if kind == "pillar":
        return [tree.pillar, tree.pillar / "base", *tree.formula_roots()]
    return [tree.salt, *tree.formula_roots()]


def find_top(tree: SaltTree, name: str, kind: str = "salt") -> Path:
    """The ``.top`` file a name like ``qvm.sys-net`` (or ``qvm/sys-net.top``) stands for."""
    stem = name.removesuffix(".top")
    if not stem or ".." in stem.split("/") or stem.startswith("/"):
        raise UsageError(f"invalid top name {name!r}")
    relative = [stem.replace(".", "/") + ".top", stem + ".top", stem + "/init.top"]
    for root in _roots(tree, kind):
        for rel in relative:
            candidate = root / rel
            if candidate.is_file() and "_tops" not in candidate.relative_to(root).parts:
                return candidate
    raise UsageError(f"no top file {stem!r} in the {kind} tree (looked for "
                     f"{', '.join(relative)} in {', '.join(map(str, _roots(tree, kind)))})")


def enabled(tree: SaltTree, kind: str = "salt") -> list[str]:
    """The enabled tops, as ``NAME.top``."""
    directory = tree.tops(kind)
    if not directory.is_dir():
        return []
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".top"))


def available(tree: SaltTree, kind: str = "salt") -> list[str]:
    """Every top file the tree offers, as ``NAME.top`` (dots for directories)."""
    found = set()
    for root in _roots(tree, kind):
        if not root.is_dir():
            continue
        for path in root.rglob("*.top"):
            rel = path.relative_to(root)
            if "_tops" in rel.parts:
                continue
            found.add(".".join(rel.with_suffix("").parts) + ".top")
    return sorted(found)


def enable(tree: SaltTree, names: list[str], kind: str = "salt") -> dict[str, Any]:
    """Link each named top; ``{"NAME.top": {"status": "enabled"}}`` for each."""
    targets = {name: find_top(tree, name, kind) for name in names}  # all found, or none linked
    directory = tree.tops(kind)
    directory.mkdir(parents=True, exist_ok=True)
    result = {}
    for name, target in targets.items():
        link = directory / (name.removesuffix(".top") + ".top")
        result[link.name] = {"status": "enabled"}
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    write_merged(tree)
    return result


def disable(tree: SaltTree, names: list[str], kind: str = "salt") -> dict[str, Any]:
    """Remove each named top's link; ``{"NAME.top": {"status": "disabled"}}``."""
    directory = tree.tops(kind)
    result = {}
    for name in names:
        link = directory / (name.removesuffix(".top") + ".top")
        if link.is_symlink() or link.exists():
            link.unlink()
        result[link.name] = {"status": "disabled"}
    write_merged(tree)
    return result


def merged(tree: SaltTree, kind: str = "salt") -> dict[str, Any]:
    """The merge of the enabled tops: per saltenv and target, every state once, in order."""
    result: dict[str, dict[str, list[Any]]] = {}
    for name in enabled(tree, kind):
        path = tree.tops(kind) / name
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise UsageError(f"top {name}: cannot read it: {error}") from None
        if not isinstance(data, dict):
            raise UsageError(f"top {name}: expected saltenv: {{target: [states]}}")
        for env, targets in data.items():
            for target, states in (targets or {}).items():
                entries = result.setdefault(str(env), {}).setdefault(str(target), [])
                for state in states or []:
                    if state not in entries:
                        entries.append(state)
    return result


def write_merged(tree: SaltTree) -> None:
    """Rewrite ``top.sls`` of the state and pillar trees from the enabled tops."""
    for kind, root in (("salt", tree.salt), ("pillar", tree.pillar)):
        if not root.is_dir():
            continue
        data = merged(tree, kind)
        text = HEADER + (yaml.safe_dump(data, default_flow_style=False, sort_keys=True)
                         if data else "{}\n")
        target = root / "top.sls"
        if target.exists() and target.read_text() == text:
            continue
        temp = target.with_name(".top.sls.new")
        temp.write_text(text)
        temp.replace(target)
