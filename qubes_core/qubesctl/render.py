"""Each target's own pillar, and what the top file gives it, rendered once in dom0.

The top data is rendered once; each target is then matched against it with
Salt's own matchers, given that target's id, its rendered pillar and nothing
else, so ``I@qubes:type:template`` and compound targets decide as they would
in Salt (the grains are dom0's, as when Qubes renders a VM's data in dom0).
One process, one pass: the reference asks Salt once per VM (#6144).
"""

from __future__ import annotations

import copy
from typing import Any

from qubes_core.qubesctl.targets import Target


def target_opts(opts: dict[str, Any], name: str) -> dict[str, Any]:
    """The options of ``opts`` as if ``name`` were the minion."""
    mine = copy.copy(opts)
    mine["id"] = mine["minion_id"] = name
    mine["grains"] = dict(opts.get("grains") or {}, id=name)
    return mine


def pillar_of(opts: dict[str, Any], name: str) -> dict[str, Any]:
    """The pillar of minion ``name`` rendered from the installation's pillar tree."""
    import salt.pillar

    mine = target_opts(opts, name)
    pillar = salt.pillar.get_pillar(mine, mine["grains"], name, saltenv=opts.get("saltenv"),
                                    pillarenv=opts.get("pillarenv"))
    result = pillar.compile_pillar()
    errors = result.get("_errors") if isinstance(result, dict) else None
    if errors:
        raise ValueError(f"the pillar of {name} did not render: {'; '.join(map(str, errors))}")
    return dict(result)


def top_states(top: dict[str, Any], opts: dict[str, Any], name: str, pillar: dict[str, Any],
               matchers: Any) -> list[str]:
    """The states (``ENV:SLS``) the rendered ``top`` gives minion ``name``."""
    mine = target_opts(opts, name)
    mine["pillar"] = pillar
    found: list[str] = []
    for env, body in top.items():
        for expression, items in (body or {}).items():
            items = [items] if isinstance(items, str) else list(items or [])
            kind = next((i["match"] for i in items if isinstance(i, dict) and "match" in i),
                        "compound")
            if kind == "nodegroup":
                matched = matchers["nodegroup_match.match"](
                    expression, opts.get("nodegroups", {}), opts=mine, minion_id=name)
            else:
                matched = matchers[f"{kind}_match.match"](expression, opts=mine,
                                                          minion_id=name)
            if matched:
                found += [f"{env}:{i}" for i in items if isinstance(i, str)
                          and f"{env}:{i}" not in found]
    return found


def rendered_top(opts: dict[str, Any]) -> dict[str, Any]:
    """The top data of every saltenv, merged as the configuration says."""
    import salt.state

    highstate = salt.state.HighState(target_opts(opts, opts["id"]))
    try:
        top = highstate.get_top()
        errors = highstate.verify_tops(top)
    finally:
        highstate.destroy()
    if errors:
        raise ValueError("the top file did not render: " + "; ".join(errors))
    return dict(top)


def prepare(opts: dict[str, Any], targets: list[Target], need_states: bool) -> None:
    """Render each target's pillar; with ``need_states``, also what the top gives it."""
    import salt.loader

    top = rendered_top(opts) if need_states else {}
    matchers = salt.loader.matchers(opts) if need_states else None
    for target in targets:
        target.pillar = pillar_of(opts, target.name)
        if need_states:
            target.states = top_states(top, opts, target.name, target.pillar, matchers)
