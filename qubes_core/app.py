"""The app: every VM, label, pool and global setting of one installation.

``Qubes(path)`` opens (and locks) a qubes.xml; ``Qubes.create_empty_store``
makes a new one with dom0, the default labels and a default pool. Changes are
made through properties and collections (which fire events) and persisted by
:meth:`Qubes.save`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

from qubes_core import exc
from qubes_core.backend import OfflineRuntime, Runtime
from qubes_core.events import handler
from qubes_core.ext import load_extensions
from qubes_core.labels import Label, default_labels, validate_label
from qubes_core.properties import Property, PropertyHolder, VMProperty, read_only
from qubes_core.storage import Pool, make_pool
from qubes_core.store import QubesXmlStore
from qubes_core.vm import get_vm_class
from qubes_core.vm.base import MAX_QID, BaseVM
from qubes_core.vm.dispvm import MAX_DISPID, DispVM
from qubes_core.vm.network import follows_default_netvm
from qubes_core.vm.qubesvm import (
    QubesVM,
    host_memory_mib,
    validate_disposable_template,
    validate_kernel,
)

log = logging.getLogger("qubes.app")

V = TypeVar("V", bound=BaseVM)


class VMCollection:
    """The VMs of the app, by qid, name and uuid."""

    def __init__(self, app: Qubes):
        self.app = app
        self._by_qid: dict[int, BaseVM] = {}
        self._by_name: dict[str, BaseVM] = {}
        self._by_uuid: dict[uuidlib.UUID, BaseVM] = {}

    def add(self, vm: BaseVM, fire: bool = True) -> BaseVM:
        if vm.qid in self._by_qid:
            raise exc.QubesValueError(f"qid {vm.qid} is already used by {self._by_qid[vm.qid]}")
        if vm.name in self._by_name:
            raise exc.QubesVMAlreadyExistsError(f"a VM named {vm.name!r} already exists")
        if vm.uuid is not None and vm.uuid in self._by_uuid:
            raise exc.QubesValueError(f"uuid {vm.uuid} is already used")
        self._by_qid[vm.qid] = vm
        self._by_name[vm.name] = vm
        if vm.uuid is not None:
            self._by_uuid[vm.uuid] = vm
        if fire:
            self.app.fire_event("domain-add", vm=vm)
        return vm

    def __getitem__(self, key: Any) -> BaseVM:
        if isinstance(key, BaseVM):
            if self._by_qid.get(key.qid) is key:
                return key
        elif isinstance(key, bool):
            pass
        elif isinstance(key, int):
            if key in self._by_qid:
                return self._by_qid[key]
        elif isinstance(key, uuidlib.UUID):
            if key in self._by_uuid:
                return self._by_uuid[key]
        elif isinstance(key, str):
            if key in self._by_name:
                return self._by_name[key]
            if key.startswith("uuid:"):
                try:
                    return self[uuidlib.UUID(key[5:])]
                except ValueError:
                    pass
        raise exc.QubesVMNotFoundError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        return self.get(key) is not None

    def __iter__(self) -> Iterator[BaseVM]:
        return iter([self._by_qid[qid] for qid in sorted(self._by_qid)])

    def __len__(self) -> int:
        return len(self._by_qid)

    def keys(self) -> list[str]:
        return sorted(self._by_name)

    def by_name(self, name: str) -> BaseVM | None:
        """The VM named ``name`` (a name only: no qid or uuid lookup), else None."""
        return self._by_name.get(name)

    def __delitem__(self, key: Any) -> None:
        vm = self[key]
        if vm.qid == 0:
            raise exc.QubesVMInUseError(vm, "dom0 cannot be removed")
        referrers = vm_references(self.app, vm)
        if referrers:
            where = ", ".join(f"{holder}.{prop}" for holder, prop in referrers)
            raise exc.QubesVMInUseError(vm, f"cannot remove {vm}: it is used by {where}")
        self.app.fire_event("domain-pre-delete", pre_event=True, vm=vm)
        del self._by_qid[vm.qid]
        del self._by_name[vm.name]
        if vm.uuid is not None:
            self._by_uuid.pop(vm.uuid, None)
        self.app.fire_event("domain-delete", vm=vm)

    def get_new_unused_qid(self) -> int:
        for qid in range(1, MAX_QID + 1):
            if qid not in self._by_qid:
                return qid
        raise LookupError("no free qid left")

    def get_new_unused_dispid(self, rng: random.Random | None = None) -> int:
        """A free DispVM number whose default name ``disp<N>`` is free too (drawn from
        ``rng``, by default the process's generator)."""
        draw: Any = rng if rng is not None else random
        used = {vm.property_own_value("dispid") for vm in self if isinstance(vm, DispVM)}
        used.update(int(name[4:]) for name in self._by_name
                    if name.startswith("disp") and name[4:].isdigit())
        if len(used) > MAX_DISPID // 2:
            free = [i for i in range(1, MAX_DISPID + 1) if i not in used]
            if not free:
                raise LookupError("no free dispid left")
            return draw.choice(free)
        while True:
            dispid = draw.randint(1, MAX_DISPID)
            if dispid not in used:
                return dispid


def vm_references(app: Qubes, target: BaseVM) -> list[tuple[Any, str]]:
    """Where ``target`` is referenced: set VM properties of other VMs, global properties."""
    found: list[tuple[Any, str]] = []
    for prop in app.property_list():
        if isinstance(prop, VMProperty) and getattr(app, prop.__name__, None) is target:
            found.append((app, prop.__name__))
    for vm in app.domains:
        if vm is target:
            continue
        for prop in vm.property_list():
            if (isinstance(prop, VMProperty) and vm.property_is_set(prop.__name__)
                    and vm.property_own_value(prop.__name__) is target):
                found.append((vm, prop.__name__))
    return found


def _validate_default_netvm(app: Qubes, prop: Any, value: Any) -> Any:
    """A netvm for every VM that follows the default: it must provide network, and no
    VM on its own chain may follow the default (that VM would route through itself)."""
    if value is None:
        return None
    if not value.provides_network:
        raise exc.QubesValueError(f"default_netvm: {value} does not provide network")
    if not app.events_enabled:  # loading: the loader checks the whole graph afterwards
        return value
    current, seen = value, set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if follows_default_netvm(current):
            raise exc.QubesPropertyValueError(
                app, prop, value,
                f"default_netvm: {value} would reach the network through {current}, which "
                "itself follows default_netvm: a loop (set its netvm first)")
        current = current.property_own_value("netvm")
    return value


def _validate_pool_name(app: Qubes, prop: Any, value: str) -> str:
    if value not in app.pools:
        raise exc.QubesPropertyValueError(
            app, prop, value, f"{prop.__name__}: no such pool {value!r} (pools: "
            f"{', '.join(sorted(app.pools)) or 'none'})")
    return value


def _default_pool(app: Qubes) -> str:
    for pool in app.pools.values():
        if pool.driver in ("file-reflink", "file", "lvm_thin"):
            return pool.name
    return ""


def _default_pool_kernel(app: Qubes) -> str:
    return "linux-kernel" if "linux-kernel" in app.pools else app.default_pool


def _positive(app: Qubes, prop: Any, value: int) -> int:
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _template_class() -> Any:
    return get_vm_class("TemplateVM")


def _dom0(app: Qubes) -> Any:
    return app.domains.get(0)



def _set_up(pool: Pool) -> None:
    """The pool's own set-up (blocking); a failure that left nothing behind is refused."""
    try:
        pool.setup()
    except OSError as err:
        raise exc.StoragePoolException(f"pool {pool.name!r}: setup failed: {err}") from err

class Qubes(PropertyHolder):
    """One installation's model."""

    default_guivm = VMProperty("default_guivm", allow_none=True, default=_dom0,
                               doc="VM that shows the windows of VMs that do not set their "
                                   "guivm.")
    default_audiovm = VMProperty("default_audiovm", allow_none=True, default=_dom0,
                                 doc="VM that plays the sound of VMs that do not set their "
                                     "audiovm.")
    default_template = VMProperty("default_template", vmclass=_template_class,
                                  allow_none=True, default=None,
                                  doc="Template of new AppVMs.")
    default_netvm = VMProperty("default_netvm", allow_none=True, default=None,
                               setter=_validate_default_netvm,
                               doc="netvm of VMs that do not set their own.")
    default_dispvm = VMProperty("default_dispvm", allow_none=True, default=None,
                                setter=validate_disposable_template,
                                doc="AppVM whose DispVMs are used by default.")
    management_dispvm = VMProperty("management_dispvm", allow_none=True, default=None,
                                   setter=validate_disposable_template,
                                   doc="AppVM whose DispVMs apply Salt states to VMs.")
    clockvm = VMProperty("clockvm", allow_none=True, default=None,
                         doc="VM that keeps the time (gets the clocksync service).")
    updatevm = VMProperty("updatevm", allow_none=True, default=None,
                          doc="VM that downloads dom0 updates.")
    default_pool = Property("default_pool", type=str, setter=_validate_pool_name,
                            default=_default_pool, doc="Pool of new volumes.")
    default_pool_root = Property("default_pool_root", type=str, setter=_validate_pool_name,
                                 default=lambda app: app.default_pool,
                                 doc="Pool of new root volumes.")
    default_pool_private = Property("default_pool_private", type=str,
                                    setter=_validate_pool_name,
                                    default=lambda app: app.default_pool,
                                    doc="Pool of new private volumes.")
    default_pool_volatile = Property("default_pool_volatile", type=str,
                                     setter=_validate_pool_name,
                                     default=lambda app: app.default_pool,
                                     doc="Pool of new volatile volumes.")
    default_pool_kernel = Property("default_pool_kernel", type=str,
                                   setter=_validate_pool_name, default=_default_pool_kernel,
                                   doc="Pool holding dom0-provided kernels.")
    default_kernel = Property("default_kernel", type=str, setter=validate_kernel, default="",
                              doc="Kernel of VMs that do not set their own.")
    default_qrexec_timeout = Property("default_qrexec_timeout", type=int, setter=_positive,
                                      default=60,
                                      doc="Seconds to wait for a VM's qrexec agent.")
    default_shutdown_timeout = Property("default_shutdown_timeout", type=int,
                                        setter=_positive, default=60,
                                        doc="Seconds to wait for a VM to shut down.")
    stats_interval = Property("stats_interval", type=int, setter=_positive, default=3,
                              doc="Seconds between VM statistics reports.")
    check_updates_vm = Property("check_updates_vm", type=bool, default=True,
                                doc="Check for updates inside VMs.")
    maxmem = Property("maxmem", type=int, setter=read_only, persisted=False,
                      default=lambda app: host_memory_mib(),
                      doc="Memory of the machine (MiB).")
    no_cpus = Property("no_cpus", type=int, setter=read_only, persisted=False,
                       default=lambda app: os.cpu_count() or 1,
                       doc="Number of CPUs of the machine.")

    def __init__(self, store: str | os.PathLike[str] | None = None, *, load: bool = True,
                 lock: bool = True, runtime: Runtime | None = None):
        super().__init__()
        load_extensions()
        self.domains = VMCollection(self)
        self.labels: dict[int, Label] = {}
        self.pools: dict[str, Pool] = {}
        self.runtime: Runtime = runtime or OfflineRuntime()
        self.unknown_properties: dict[str, str] = {}
        self.store = QubesXmlStore(Path(store)) if store is not None else None
        if self.store is not None and load:
            self.store.open(lock=lock)
            self.store.load_into(self)

    def __str__(self) -> str:
        return "the system"

    @property
    def base_dir(self) -> Path:
        """Directory holding qubes.xml and the VMs' own directories."""
        if self.store is None:
            raise exc.QubesStoreError("this app has no qubes.xml, hence no base directory")
        return self.store.path.parent

    @property
    def adminvm(self) -> BaseVM:
        return self.domains[0]

    # --- creation ---------------------------------------------------------

    @classmethod
    def create_empty_store(cls, store: str | os.PathLike[str], *,
                           pool_dir: str | os.PathLike[str] | None = None,
                           pool_driver: str = "file-reflink", runtime: Runtime | None = None,
                           **pool_options: Any) -> Qubes:
        """A new qubes.xml with dom0, the default labels, the default pool for volumes
        and the ``linux-kernel`` pool of dom0's VM kernels (``BASE/vm-kernels``).

        ``pool_options`` go to the default pool as given: a ``file-reflink`` pool on
        a filesystem that cannot reflink is refused (the error names
        ``setup_check=no``) unless the caller passes ``setup_check="no"``, or
        ``setup_check="auto"`` (reflink where the filesystem can, else sparse copies
        with a warning; qubes.xml records the outcome). A refused store writes no
        qubes.xml.
        """
        path = Path(store)
        if path.exists():
            raise exc.QubesStoreError(f"{path} already exists; refusing to overwrite it")
        app = cls(None, load=False, runtime=runtime)
        app.store = QubesXmlStore(path)
        app.labels = default_labels()
        pool_dir = Path(pool_dir) if pool_dir is not None else path.parent
        app.add_pool("varlibqubes", pool_driver, dir_path=str(pool_dir), **pool_options)
        app.add_pool("linux-kernel", "linux-kernel", dir_path=str(path.parent / "vm-kernels"))
        dom0 = get_vm_class("AdminVM")(app, qid=0, name="dom0", uuid=uuidlib.UUID(int=0))
        app.domains.add(dom0, fire=False)
        app.store.create()
        app.save()
        return app

    @overload
    def add_new_vm(self, cls: type[V], qid: int | None = None, **kwargs: Any) -> V: ...

    @overload
    def add_new_vm(self, cls: str, qid: int | None = None, **kwargs: Any) -> BaseVM: ...

    def add_new_vm(self, cls: str | type[BaseVM], qid: int | None = None,
                   **kwargs: Any) -> BaseVM:
        """Create a VM in the model (not on disk); return it."""
        vmclass = get_vm_class(cls) if isinstance(cls, str) else cls
        if "name" in kwargs and kwargs["name"] in self.domains._by_name:
            raise exc.QubesVMAlreadyExistsError(f"a VM named {kwargs['name']!r} already exists")
        if qid is None:
            qid = self.domains.get_new_unused_qid()
        kwargs.setdefault("uuid", uuidlib.uuid4())
        vm = vmclass(self, qid=qid, **kwargs)
        if not vm.property_own_value("name"):
            raise exc.QubesValueError("a new VM needs a name")
        if not vm.property_is_set("label") and not vm.property_get_def("label").has_default:
            raise exc.QubesValueError(f"a new VM needs a label ({vm.name})")
        if isinstance(vm, QubesVM):
            vm.init_volume_config()
        self.domains.add(vm)
        return vm

    def clone_vm(self, src: BaseVM, new_name: str, cls: str | type[BaseVM] | None = None,
                 **kwargs: Any) -> BaseVM:
        """A new VM with ``src``'s properties, features and tags (not its devices); if
        any of it fails, the new VM is removed again and the error raised.

        ``domain-cloned`` (with ``src``) is fired on the new VM afterwards, so that
        extensions copy what they keep themselves (the firewall, for one).
        """
        vmclass = cls or type(src)
        if src.property_is_set("template") and "template" not in kwargs:
            kwargs["template"] = src.property_own_value("template")
        vm = self.add_new_vm(vmclass, name=new_name, label=kwargs.pop("label", src.label),
                             **kwargs)
        try:
            vm.clone_properties(src, [p.__name__ for p in src.property_list()
                                      if p.clone and p.__name__ not in kwargs
                                      and p.__name__ != "template"])
            for key, value in src.features.items():
                vm.features[key] = value
            vm.tags.update(src.tags)
            vm.fire_event("domain-cloned", src=src)  # extensions copy what they own
        except BaseException:
            # A clone is made whole or not at all: no half-made VM stays behind.
            del self.domains[vm]
            raise
        return vm

    # --- labels -----------------------------------------------------------

    def get_label(self, label: Any) -> Label:
        if isinstance(label, Label) and self.labels.get(label.index) is label:
            return label
        if isinstance(label, int) and not isinstance(label, bool) and label in self.labels:
            return self.labels[label]
        if isinstance(label, str):
            for candidate in self.labels.values():
                if candidate.name == label:
                    return candidate
            if label.startswith("label-") and label[6:].isdigit():
                return self.get_label(int(label[6:]))
        raise exc.QubesLabelNotFoundError(label)

    def add_label(self, name: str, color: str) -> Label:
        validate_label(name, color)
        if any(label.name == name for label in self.labels.values()):
            raise exc.QubesValueError(f"label {name!r} already exists")
        index = max(self.labels, default=0) + 1
        label = Label(index, color, name)
        self.labels[index] = label
        self.fire_event("label-add", label=label)
        return label

    def remove_label(self, name: str) -> None:
        label = self.get_label(name)
        if label.index <= 8:
            raise exc.QubesValueError(f"label {name!r} is a default label and cannot be removed")
        users = [vm.name for vm in self.domains if vm.property_own_value("label") is label]
        if users:
            raise exc.QubesValueError(f"label {name!r} is used by: {', '.join(sorted(users))}")
        del self.labels[label.index]
        self.fire_event("label-remove", label=label)

    # --- pools ------------------------------------------------------------

    def add_pool(self, name: str, driver: str, **config: Any) -> Pool:
        """Add a pool: checked (``pool-pre-add`` may veto), set up, then joined.

        The set-up (its directory, the driver's checks of the filesystem) blocks:
        in qubesd, :meth:`add_pool_async` does it in a worker thread.
        """
        pool = self._new_pool(name, driver, config)
        _set_up(pool)
        return self._join_pool(pool)

    async def add_pool_async(self, name: str, driver: str, **config: Any) -> Pool:
        """:meth:`add_pool` with the set-up in a worker thread: the loop stays free."""
        pool = self._new_pool(name, driver, config)
        await asyncio.to_thread(_set_up, pool)
        return self._join_pool(pool)

    def _new_pool(self, name: str, driver: str, config: dict[str, Any]) -> Pool:
        """The pool, checked by the app and by the ``pool-pre-add`` handlers (not set up)."""
        if name in self.pools:
            raise exc.QubesValueError(f"pool {name!r} already exists")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise exc.QubesValueError(f"invalid pool name {name!r}")
        pool = make_pool(name, driver, **config)
        self.fire_event("pool-pre-add", pre_event=True, pool=pool)
        return pool

    def _join_pool(self, pool: Pool) -> Pool:
        if pool.name in self.pools:  # added by someone else while this one was set up
            raise exc.QubesValueError(f"pool {pool.name!r} already exists")
        self.pools[pool.name] = pool
        self.fire_event("pool-add", pool=pool)
        return pool

    def remove_pool(self, name: str) -> Pool:
        if name not in self.pools:
            raise exc.QubesValueError(f"no such pool: {name!r}")
        users = sorted({vm.name for vm in self.domains
                        for volume in vm.volume_config.values()
                        if volume.get("pool") == name})
        if users:
            raise exc.QubesPoolInUseError(f"pool {name!r} is used by: {', '.join(users)}")
        pool = self.pools[name]
        self.fire_event("pool-pre-delete", pre_event=True, pool=pool)
        del self.pools[name]
        self.fire_event("pool-delete", pool=pool)
        return pool

    # --- persistence ------------------------------------------------------

    def save(self) -> None:
        if self.store is None:
            raise exc.QubesStoreError("this app has no qubes.xml to save to")
        self.store.save(self)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Qubes:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- rules that span VMs ---------------------------------------------

    @handler("property-set:clockvm")
    def _on_set_clockvm(self, event: str, name: str, newvalue: Any, oldvalue: Any = None
                        ) -> None:
        self._move_clocksync(oldvalue, newvalue)

    @handler("property-reset:clockvm")
    def _on_reset_clockvm(self, event: str, name: str, oldvalue: Any = None) -> None:
        self._move_clocksync(oldvalue, None)

    @staticmethod
    def _move_clocksync(old: Any, new: Any) -> None:
        if old is not None and old is not new and "service.clocksync" in old.features:
            del old.features["service.clocksync"]
        if new is not None:
            new.features["service.clocksync"] = True
