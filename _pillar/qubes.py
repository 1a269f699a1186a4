"""ext_pillar ``qubes``: each VM's ``qubes`` pillar (type, template, netvm, features, tags).

Configured as ``ext_pillar: [{qubes: {}}]`` (see
:func:`qubes_core.mgmt.layout.minion_config`); the minion id is the VM's name.
An id that names no VM gets no ``qubes`` key; an installation that cannot be
reached is logged and gives nothing, so other pillar data still renders.
"""

from __future__ import annotations

import logging

from qubes_core import exc
from qubes_core.mgmt import connection
from qubes_core.mgmt.pillar import vm_pillar

log = logging.getLogger(__name__)


def ext_pillar(minion_id, pillar, *args, **kwargs):
    """The ``qubes`` pillar of the VM named ``minion_id``."""
    try:
        return vm_pillar(connection.client(__opts__), minion_id)
    except (exc.QubesException, OSError) as error:
        log.error("qubes pillar of %s: %s", minion_id, " ".join(str(error).split()))
        return {}
