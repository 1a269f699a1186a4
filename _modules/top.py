"""Salt execution module ``top``: switch formulas' top files on and off ("topd").

``top.enable qvm.sys-net`` links the formula's ``qvm/sys-net.top`` as
``_tops/base/qvm.sys-net.top`` and rewrites the merged ``top.sls``, so the
next ``state.highstate`` applies it; ``top.disable`` undoes that. With
``pillar=True`` the same is done for the pillar tree. The work is in
:mod:`qubes_core.mgmt.tops`; the tree is the one of the installation the
minion's ``qubes.base_dir`` option names (``/srv`` in production).
"""

from __future__ import annotations

from qubes_core.mgmt import connection, layout, tops
from qubes_core.mgmt.saltext import salt_errors
from qubes_core.mgmt.values import parse_bool


def _tree():
    return layout.salt_tree(connection.base_dir_from_opts(__opts__))


def _kind(pillar) -> str:
    return "pillar" if parse_bool(pillar, "pillar") else "salt"


def enable(*names, **kwargs):
    """
    Enable the top files of the named formulas.

    CLI Example:

    .. code-block:: bash

        salt-call top.enable qvm.sys-net qvm.sys-firewall
        salt-call top.enable qvm.sys-net pillar=True
    """
    with salt_errors("top.enable"):
        return tops.enable(_tree(), list(names), _kind(kwargs.get("pillar", False)))


def disable(*names, **kwargs):
    """
    Disable the top files of the named formulas.

    CLI Example:

    .. code-block:: bash

        salt-call top.disable qvm.sys-net
    """
    with salt_errors("top.disable"):
        return tops.disable(_tree(), list(names), _kind(kwargs.get("pillar", False)))


def enabled(pillar=False):
    """
    The enabled tops.

    CLI Example:

    .. code-block:: bash

        salt-call top.enabled
    """
    with salt_errors("top.enabled"):
        return {name: {"status": "enabled"} for name in tops.enabled(_tree(), _kind(pillar))}


def disabled(pillar=False):
    """
    The tops the formulas offer that are not enabled.

    CLI Example:

    .. code-block:: bash

        salt-call top.disabled
    """
    with salt_errors("top.disabled"):
        tree, kind = _tree(), _kind(pillar)
        on = set(tops.enabled(tree, kind))
        return {name: {"status": "disabled"} for name in tops.available(tree, kind)
                if name not in on}


def status(pillar=False):
    """
    Every top the formulas offer, enabled or disabled.

    CLI Example:

    .. code-block:: bash

        salt-call top.status
    """
    return {**disabled(pillar), **enabled(pillar)}


def tree():
    """
    The paths of the installation's Salt tree (``salt``, ``user_salt``,
    ``pillar``, ``user_pillar``, ``formulas``, ``user_formulas``).

    CLI Example:

    .. code-block:: bash

        salt-call top.tree
    """
    with salt_errors("top.tree"):
        found = _tree()
        return {key: str(getattr(found, key)) for key in
                ("salt", "user_salt", "pillar", "user_pillar", "formulas", "user_formulas")}
