"""Pools: what the app does when a pool joins it, and when qubes.xml has loaded.

A pool is set up (its directory, the reflink probe) before it joins the app;
a pool that cannot be set up, or whose name or options are wrong, never
joins (a failed setup has removed what it created). Options in qubes.xml that
the driver does not know are kept and warned of once loaded. The storage
layer knows nothing of the app: these handlers join the two.
"""

from __future__ import annotations

import logging
from typing import Any

from qubes_core.exc import StoragePoolException
from qubes_core.ext import Extension, app_handler
from qubes_core.storage import Pool, check_pool_name

log = logging.getLogger("qubes.storage")


class PoolsExtension(Extension):
    """Sets pools up as they are added; warns of options their driver does not know."""

    @app_handler("pool-pre-add")
    def on_pool_pre_add(self, app: Any, event: str, pool: Pool, **kwargs: Any) -> None:
        """Check the name and options, then set the pool up; raising vetoes the add."""
        check_pool_name(pool.name)
        pool.check_options()
        try:
            pool.setup()
        except OSError as err:
            raise StoragePoolException(f"pool {pool.name!r}: setup failed: {err}") from err

    @app_handler("app-loaded")
    def on_app_loaded(self, app: Any, event: str, **kwargs: Any) -> None:
        """Warn of pool options in qubes.xml that the driver does not know (kept, unused)."""
        for pool in app.pools.values():
            for option in pool.unknown_options():
                log.warning("pool %s: option %s is not known to driver %s (%s); it is kept "
                            "in qubes.xml but not used", pool.name, option, pool.driver,
                            pool.describe_known_options())
