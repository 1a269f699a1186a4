"""Storage pools. Drivers are plugins of the ``qubes_core.storage`` entry point group.

A pool is configured in qubes.xml as ``<pool name=... driver=... option=.../>``;
its options are kept as strings so that an option this version does not know
survives a load and save.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from typing import Any

log = logging.getLogger("qubes.storage")


class Pool:
    """A named place volumes live in. Drivers subclass this."""

    driver = "unknown"

    def __init__(self, name: str, **config: Any):
        self.name = name
        self.config: dict[str, str] = {k: str(v) for k, v in config.items()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} driver={self.driver}>"

    def __str__(self) -> str:
        return self.name

    def xml_attributes(self) -> dict[str, str]:
        """The attributes of this pool's ``<pool>`` element in qubes.xml."""
        return {"name": self.name, "driver": self.driver, **self.config}


class UnavailablePool(Pool):
    """A pool whose driver is not installed: kept so qubes.xml round-trips, not usable."""

    def __init__(self, name: str, driver: str, **config: Any):
        super().__init__(name, **config)
        self.driver = driver


@functools.cache
def pool_drivers() -> dict[str, type[Pool]]:
    drivers: dict[str, type[Pool]] = {}
    for entry in importlib.metadata.entry_points(group="qubes_core.storage"):
        try:
            drivers[entry.name] = entry.load()
        except Exception:
            log.exception("cannot load storage driver %s from %s", entry.name, entry.value)
    return drivers


def make_pool(name: str, driver: str, **config: Any) -> Pool:
    """Instantiate a pool of ``driver``; an unknown driver gives an unusable placeholder."""
    cls = pool_drivers().get(driver)
    if cls is None:
        log.warning("pool %s: storage driver %r is not installed; the pool is unavailable",
                    name, driver)
        return UnavailablePool(name, driver, **config)
    return cls(name=name, **config)
