"""Pools: what the app checks before a pool joins it, and warns of once qubes.xml loaded.

A pool whose name or options are wrong never joins, nor is it set up (the app
sets a pool up after these checks: ``Qubes.add_pool``). Options in qubes.xml
that the driver does not know are kept and warned of once loaded. The storage
layer knows nothing of the app: these handlers join the two.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qubes_core.ext import Extension, app_handler
from qubes_core.storage import Pool, check_pool_name

if TYPE_CHECKING:
    from qubes_core.app import Qubes

log = logging.getLogger("qubes.storage")


class PoolsExtension(Extension):
    """Checks pools as they are added; warns of options their driver does not know."""

    @app_handler("pool-pre-add")
    def on_pool_pre_add(self, app: Qubes, event: str, pool: Pool, **kwargs: Any) -> None:
        """Check the name and options; raising vetoes the add."""
        check_pool_name(pool.name)
        pool.check_options()

    @app_handler("app-loaded")
    def on_app_loaded(self, app: Qubes, event: str, **kwargs: Any) -> None:
        """Warn of pool options in qubes.xml that the driver does not know (kept, unused)."""
        for pool in app.pools.values():
            for option in pool.unknown_options():
                log.warning("pool %s: option %s is not known to driver %s (%s); it is kept "
                            "in qubes.xml but not used", pool.name, option, pool.driver,
                            pool.describe_known_options())
