"""The volumes of one VM, handled together.

``Storage(vm)`` turns ``vm.volume_config`` into volumes of the named pools and
creates, verifies, starts, stops and removes them as a whole. Volumes start
and stop concurrently (each in its own thread, under its own lock); when one
fails to start, the ones already started are undone, so a VM never runs on
half of its disks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from qubes_core.storage import Pool, StorageApp, StoragePoolException, StorageVM, Volume

log = logging.getLogger("qubes.storage")


def find_source(app: StorageApp, pool_name: str, vid: str) -> Volume:
    """The volume with id ``vid``: another VM's volume if one has it, else a bare one."""
    for vm in app.domains:
        for config in vm.volume_config.values():
            if (config.get("vid") == vid and config.get("pool") in app.pools
                    and not config.get("snap_on_start")):
                return vm_storage(vm).volumes[config["name"]]
    pool: Pool | None = app.pools.get(pool_name)
    if pool is None:
        raise StoragePoolException(f"source volume {vid!r}: no such pool {pool_name!r}")
    return pool.get_volume(vid)


def vm_storage(vm: StorageVM) -> Storage:
    """The (cached) storage of ``vm``."""
    storage: Storage | None = vm.__dict__.get("_storage")
    if storage is None:
        storage = Storage(vm)
        vm.__dict__["_storage"] = storage
    return storage


class Storage:
    """Creates, starts, stops, verifies and removes all volumes of one VM."""

    def __init__(self, vm: StorageVM):
        self.vm = vm
        self._volumes: dict[str, tuple[dict[str, Any], tuple[str, str, str], Volume]] = {}

    def __repr__(self) -> str:
        return f"<Storage of {self.vm}>"

    # --- volumes ----------------------------------------------------------

    @property
    def volumes(self) -> dict[str, Volume]:
        """Volumes by name, kept in step with ``vm.volume_config``.

        A volume object lives as long as its config entry keeps its pool, vid
        and source, so that its lock serialises every operation on its files
        (and a snapshot re-based on another template snapshots the new source).
        """
        current: dict[str, Volume] = {}
        known = self._volumes
        for name, config in self.vm.volume_config.items():
            if name == "kernel":
                self._follow_kernel(config)
            if self._skipped(config):
                continue
            cached = known.get(name)
            key = (str(config.get("pool")), str(config.get("vid")),
                   str(config.get("source", "")))
            if cached is not None and cached[0] is config and cached[1] == key:
                current[name] = cached[2]
                continue
            volume = self._init_volume(name, config)
            known[name] = (config, key, volume)
            current[name] = volume
        for name in set(known) - set(current):
            del known[name]
        return current

    def _follow_kernel(self, config: dict[str, Any]) -> None:
        """Keep the kernel volume's vid equal to the VM's ``kernel`` (which may come
        from its template or the global default, and change at any time)."""
        kernel = self.vm.kernel
        if isinstance(kernel, str) and config.get("vid", "") != kernel:
            config["vid"] = kernel

    @staticmethod
    def _skipped(config: dict[str, Any]) -> bool:
        """A kernel volume without a kernel (the VM boots its own) is no volume."""
        return config.get("name") == "kernel" and not config.get("vid")

    def _init_volume(self, name: str, config: dict[str, Any]) -> Volume:
        app = self.vm.app
        pool_name = config.get("pool")
        pool = app.pools.get(pool_name) if pool_name is not None else None
        if pool is None:
            raise StoragePoolException(
                f"volume {name} of {self.vm}: no such pool {pool_name!r} "
                f"(pools: {', '.join(sorted(app.pools)) or 'none'})")
        config.setdefault("name", name)
        source = None
        if config.get("snap_on_start") and config.get("source"):
            source = find_source(app, str(pool_name), str(config["source"]))
        return pool.init_volume(self.vm, config, source)

    def __getitem__(self, name: str) -> Volume:
        try:
            return self.volumes[name]
        except KeyError:
            raise StoragePoolException(f"{self.vm} has no volume {name!r}") from None

    def outdated_volumes(self) -> list[str]:
        """Names of snapshot volumes whose source changed since the VM started."""
        return sorted(name for name, volume in self.volumes.items() if volume.is_outdated())

    # --- whole-VM operations -------------------------------------------------

    @staticmethod
    async def _gather(calls: dict[str, Any]) -> tuple[list[str], dict[str, BaseException]]:
        names = list(calls)
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        done, failed = [], {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                failed[name] = result
            else:
                done.append(name)
        return done, failed

    def _raise_first(self, what: str, failed: dict[str, BaseException]) -> None:
        for name, error in failed.items():
            log.error("%s: %s of volume %s failed: %s", self.vm, what, name, error)
        name, error = next(iter(failed.items()))
        if isinstance(error, StoragePoolException):
            raise error
        raise StoragePoolException(f"{what} of volume {name} of {self.vm} failed: {error}"
                                   ) from error

    async def create(self) -> None:
        """Create every volume; on failure remove those already created."""
        volumes = self.volumes
        done, failed = await self._gather({n: v.create() for n, v in volumes.items()})
        if failed:
            await self._gather({n: volumes[n].remove() for n in done})
            self._raise_first("creation", failed)

    async def verify(self) -> bool:
        """Check that every volume can start (its images or its source exist)."""
        _done, failed = await self._gather({n: v.verify() for n, v in self.volumes.items()})
        if failed:
            self._raise_first("verification", failed)
        return True

    async def start(self) -> None:
        """Verify, then start every volume concurrently; undo all if one fails."""
        await self.verify()
        volumes = self.volumes
        done, failed = await self._gather({n: v.start() for n, v in volumes.items()})
        if failed:
            await self._gather({n: volumes[n].abort_start() for n in done})
            self._raise_first("start", failed)

    async def stop(self) -> None:
        """Stop (commit or drop) every volume; all are tried even if one fails."""
        _done, failed = await self._gather({n: v.stop() for n, v in self.volumes.items()})
        if failed:
            self._raise_first("stop", failed)

    async def remove(self) -> None:
        """Remove every volume's files (all are tried even if one fails)."""
        _done, failed = await self._gather({n: v.remove() for n, v in self.volumes.items()})
        if failed:
            self._raise_first("removal", failed)

    async def clone(self, src_vm: StorageVM) -> None:
        """Give each persistent volume a copy of ``src_vm``'s volume of the same name."""
        src = vm_storage(src_vm).volumes
        calls = {}
        for name, volume in self.volumes.items():
            if volume.save_on_stop and not volume.snap_on_start and name in src:
                calls[name] = volume.import_volume(src[name])
        _done, failed = await self._gather(calls)
        if failed:
            self._raise_first("clone", failed)

    def block_devices(self) -> dict[str, str | None]:
        """Image path of each volume while the VM runs (for the domain's disks)."""
        return {name: volume.block_device() for name, volume in self.volumes.items()}
