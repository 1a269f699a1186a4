"""Default volume configuration of each VM class (see FACTS: Classes).

Each class declares its layout (``volume_layout``, one of those below) and the
directory of its volumes in a pool (``vid_dir``); a subclass installed as a
plugin inherits both. The config is plain data, persisted in
``<volume-config>``; the storage layer turns it into volumes of the named pools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qubes_core.vm.qubesvm import QubesVM

GiB = 1024**3

DEFAULT_SIZES = {"root": 20 * GiB, "private": 2 * GiB, "volatile": 10 * GiB}

#: The volumes of a new VM of a class (its ``volume_layout``): volume name ->
#: (snap_on_start, save_on_stop, rw, snapshot of the template's volume of that name).
Layout = dict[str, tuple[bool, bool, bool, bool]]

#: Root a snapshot of the template's; private and volatile its own (AppVM).
TEMPLATE_BASED: Layout = {
    "root": (True, False, True, True),
    "private": (False, True, True, False),
    "volatile": (False, False, True, False),
    "kernel": (False, False, False, False),
}
#: Root and private its own, kept at stop (TemplateVM, StandaloneVM).
SELF_CONTAINED: Layout = {
    "root": (False, True, True, False),
    "private": (False, True, True, False),
    "volatile": (False, False, True, False),
    "kernel": (False, False, False, False),
}
#: Root and private snapshots of its AppVM's, nothing kept at stop (DispVM).
DISPOSABLE: Layout = {
    "root": (True, False, True, True),
    "private": (True, False, True, True),
    "volatile": (False, False, True, False),
    "kernel": (False, False, False, False),
}


def vid_for(vm: QubesVM, volume: str) -> str:
    """The volume id inside its pool: ``appvms/NAME/VOL`` or ``vm-templates/NAME/VOL``
    (the directory is the class's ``vid_dir``)."""
    return f"{vm.vid_dir}/{vm.name}/{volume}"


def pool_for(vm: QubesVM, volume: str) -> str | None:
    """The pool for a new VM's volume: the app's ``default_pool_VOLUME``, else ``default_pool``."""
    app = vm.app
    specific = getattr(app, f"default_pool_{volume}", None)
    return specific or app.default_pool


def snapshot_source(template: QubesVM, name: str, pool: str | None) -> dict[str, Any]:
    """``source`` and ``pool`` of a snapshot of ``template``'s volume ``name``.

    A snapshot of a snapshot (a DispVM's root, whose AppVM's root snapshots a
    template) snapshots the original; the snapshot lives in its source's pool.
    """
    config = template.volume_config.get(name, {})
    if config.get("snap_on_start") and config.get("source"):
        source = config["source"]
    else:
        source = config.get("vid") or vid_for(template, name)
    return {"source": source, "pool": config.get("pool") or pool}


def rebase_snapshots(vm: QubesVM) -> list[str]:
    """Point every snapshot volume of ``vm`` at its current template; the names changed.

    Only volumes whose source is the template's (those with a ``source``) move;
    the caller has made sure that none of them is in use.
    """
    template = vm.template
    if template is None:
        return []
    changed = []
    for name, config in sorted(vm.volume_config.items()):
        if not (config.get("snap_on_start") and config.get("source")):
            continue
        if name not in template.volume_config:
            continue
        new = snapshot_source(template, name, config.get("pool"))
        if any(config.get(key) != value for key, value in new.items()):
            config.update(new)
            changed.append(name)
    return changed


def default_config(vm: QubesVM) -> dict[str, dict[str, Any]]:
    """The volume config a new VM of ``vm``'s class starts with (its ``volume_layout``)."""
    layout = vm.volume_layout
    if layout is None:
        return {}
    config: dict[str, dict[str, Any]] = {}
    template = vm.template
    for name, (snap_on_start, save_on_stop, rw, from_template) in layout.items():
        entry: dict[str, Any] = {
            "name": name,
            "pool": pool_for(vm, name),
            "rw": rw,
            "snap_on_start": snap_on_start,
            "save_on_stop": save_on_stop,
        }
        if name == "kernel":
            entry["pool"] = vm.app.default_pool_kernel or "linux-kernel"
            entry["vid"] = vm.kernel or ""
        elif from_template and template is not None:
            entry.update(snapshot_source(template, name, entry["pool"]))
            entry["vid"] = vid_for(vm, name)
            entry["size"] = template.volume_config.get(name, {}).get(
                "size", DEFAULT_SIZES.get(name))
        else:
            entry["vid"] = vid_for(vm, name)
            entry["size"] = DEFAULT_SIZES[name]
        if save_on_stop:  # the pool's, as Qubes gives new volumes
            pool = vm.app.pools.get(entry["pool"])
            entry["revisions_to_keep"] = pool.revisions_to_keep if pool is not None else 1
        config[name] = entry
    return config
