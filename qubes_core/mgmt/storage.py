"""Storage pools and volumes as management calls see them, and the pool migration.

Pool and volume details come from ``admin.pool.Info`` / ``admin.vm.volume.Info``
as plain dicts of strings (what qubesd reports). A pool is "present" when it
exists with the given driver and options: of those only ``revisions_to_keep``
can change in place; any other difference is refused with a message that says
what to do, rather than silently re-creating a pool that holds volumes.

The file -> file-reflink migration edits qubes.xml under its exclusive lock,
so it cannot run while a qubesd serves the installation: if the qubesd is the
one this process started (the embedded default), it is stopped for the
migration and the client reconnects afterwards; any other qubesd must be
stopped by the user first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qubes_core import exc
from qubes_core.client.app import Qubes
from qubes_core.mgmt.errors import UsageError
from qubes_core.mgmt.outcome import Outcome

SETTABLE = ("revisions_to_keep",)


def _pairs(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def pools(app: Qubes) -> list[str]:
    """The pool names."""
    return app.call("admin.pool.List").split()


def pool_info(app: Qubes, pool: str) -> dict[str, str]:
    """A pool's driver, options, size and usage."""
    if pool not in pools(app):
        raise UsageError(f"no such pool: {pool!r}")
    return _pairs(app.call("admin.pool.Info", arg=pool))


def pool_present(app: Qubes, pool: str, driver: str, options: Mapping[str, Any],
                 test: bool = False) -> Outcome:
    """Add the pool, or bring an existing one's ``revisions_to_keep`` to the wanted value."""
    outcome = Outcome()
    wanted = {str(k): str(v) for k, v in options.items() if v is not None}
    if pool not in pools(app):
        drivers = [line.split()[0] for line in app.call("admin.pool.ListDrivers").splitlines()
                   if line.strip()]
        if driver not in drivers:
            raise UsageError(f"no such storage driver: {driver!r} (known: "
                             f"{', '.join(drivers)})")
        if not test:
            payload = "".join(f"{k}={v}\n" for k, v in {"name": pool, **wanted}.items())
            app.call("admin.pool.Add", arg=driver, payload=payload)
        outcome.change(pool, None, {"driver": driver, **wanted})
        outcome.note(f"pool {pool} ({driver}) added")
        return outcome
    info = pool_info(app, pool)
    if info.get("driver") != driver:
        raise UsageError(f"pool {pool!r} exists with driver {info.get('driver')!r}, not "
                         f"{driver!r}: migrate it (qvm.pool_migrate) or remove it first")
    for key, value in wanted.items():
        if info.get(key) == value:
            continue
        if key not in SETTABLE:
            raise UsageError(f"pool {pool!r} has {key}={info.get(key)!r}; only "
                             f"{', '.join(SETTABLE)} can change in place: remove the pool "
                             "and add it again to change it")
        if not test:
            app.call(f"admin.pool.Set.{key}", arg=pool, payload=value)
        outcome.change(key, info.get(key), value)
        outcome.note(f"pool {pool}: {key} {info.get(key)} -> {value}")
    if not outcome.changes:
        outcome.note(f"[SKIP] pool {pool} ({driver}) already as wanted")
    return outcome


def pool_absent(app: Qubes, pool: str, test: bool = False) -> Outcome:
    """Remove the pool (qubesd refuses while volumes use it)."""
    outcome = Outcome()
    if pool not in pools(app):
        outcome.note(f"[SKIP] pool {pool} does not exist")
        return outcome
    if not test:
        app.call("admin.pool.Remove", arg=pool)
    outcome.change(pool, "present", None)
    outcome.note(f"pool {pool} removed")
    return outcome


def volumes(app: Qubes, name: str) -> list[str]:
    """The names of a VM's volumes."""
    return app.call("admin.vm.volume.List", name).split()


def volume_info(app: Qubes, name: str, volume: str) -> dict[str, str]:
    """A volume's pool, size, usage, flags and source."""
    if volume not in volumes(app, name):
        raise UsageError(f"VM {name!r} has no volume {volume!r}")
    return _pairs(app.call("admin.vm.volume.Info", name, volume))


def revisions(app: Qubes, name: str, volume: str) -> list[str]:
    """The revisions a volume keeps, oldest first."""
    volume_info(app, name, volume)
    return app.call("admin.vm.volume.ListSnapshots", name, volume).split()


def revert(app: Qubes, name: str, volume: str, revision: str | None = None,
           test: bool = False) -> Outcome:
    """Bring the volume back to ``revision`` (default: the newest kept one)."""
    kept = revisions(app, name, volume)
    if not kept:
        raise UsageError(f"volume {volume} of {name} keeps no revision to revert to")
    chosen = revision or kept[-1]
    if chosen not in kept:
        raise UsageError(f"volume {volume} of {name} has no revision {chosen!r} "
                         f"(kept: {', '.join(kept)})")
    outcome = Outcome()
    if not test:
        app.call("admin.vm.volume.Revert", name, volume, chosen)
    outcome.change(volume, "current", chosen)
    outcome.note(f"volume {volume} of {name} reverted to {chosen}")
    return outcome


def resize(app: Qubes, name: str, volume: str, size: Any, test: bool = False) -> Outcome:
    """Grow the volume to ``size`` bytes (suffixes K, M, G, T); nothing if it is that big."""
    wanted = parse_size(size)
    info = volume_info(app, name, volume)
    current = int(info.get("size", "0"))
    outcome = Outcome()
    if wanted == current:
        outcome.note(f"[SKIP] volume {volume} of {name} is already {current} bytes")
        return outcome
    if wanted < current:
        raise UsageError(f"volume {volume} of {name} is {current} bytes: volumes only "
                         f"grow, {wanted} is smaller")
    if not test:
        app.call("admin.vm.volume.Resize", name, volume, str(wanted))
    outcome.change("size", current, wanted)
    outcome.note(f"volume {volume} of {name}: {current} -> {wanted} bytes")
    return outcome


UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any) -> int:
    """``2147483648``, ``2G``, ``512MiB`` -> bytes."""
    text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in UNITS and text[-1:] else ""
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise UsageError(f"not a size: {value!r} (bytes, or a number with K, M, G or T)")
    return int(number) * UNITS[unit]


def migrate(base_dir: str | None, app: Qubes, pool_names: list[str] | None = None, *,
            setup_check: bool = True, test: bool = False) -> tuple[Outcome, bool]:
    """Switch ``file`` pools to ``file-reflink``; (outcome, whether qubesd was restarted)."""
    from qubes_core.backend import make_runtime
    from qubes_core.client.embedded import listening
    from qubes_core.paths import resolve
    from qubes_core.storage.migrate import migrate as migrate_pools

    paths = resolve(base_dir)
    embedded = app._embedded
    if embedded is None and listening(paths.admin_socket):
        raise exc.QubesException(
            f"qubesd serves {paths.base_dir}: stop it first (the migration edits qubes.xml "
            "under its exclusive lock)")
    if embedded is not None:
        app.close()
    from qubes_core.app import Qubes as ModelQubes

    try:
        with ModelQubes(paths.qubes_xml, runtime=make_runtime("offline")) as model:
            report = migrate_pools(model, pool_names or None, setup_check=setup_check,
                                   dry_run=test)
    except exc.QubesException as error:
        raise UsageError(str(error)) from None
    outcome = Outcome()
    for pool in report.pools:
        outcome.change(pool, "file", "file-reflink")
    if report.removed:
        outcome.change("removed", [], [path for path, _ in report.removed])
    outcome.comments.extend(report.lines())
    return outcome, embedded is not None
