"""qubes.xml: reading, locking and atomically writing the model (R4 file shape).

The file is locked for as long as an app has it open for writing. The lock is an
open-file-description lock (``F_OFD_SETLK``): it conflicts with the reference
tools' ``lockf`` locks, and unlike those it is not silently dropped when some
other code of the same process opens and closes the file, and it also refuses a
second writer inside the same process.

A save writes a temporary file next to the old one, fsyncs it, renames it over
the old one and fsyncs the directory, so that a crash leaves either the old or
the new file, never a torn one. A save refuses to overwrite a file that someone
else changed since we read it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import tempfile
import uuid as uuidlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lxml import etree

from qubes_core import exc, fsutil
from qubes_core.devices import DeviceAssignment
from qubes_core.features import TAG_NAME_RE, validate_feature_name
from qubes_core.labels import LABEL_COLOR_MIGRATIONS, Label, validate_label
from qubes_core.properties import Property, PropertyHolder
from qubes_core.storage import make_pool
from qubes_core.vm import get_vm_class
from qubes_core.vm.adminvm import AdminVM
from qubes_core.vm.base import BaseVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes

log = logging.getLogger("qubes.store")

FILE_MODE = 0o660
LABEL_ID_RE = re.compile(r"^label-[1-9][0-9]{0,5}$")
POOL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
VOLUME_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
BOOL_ATTR_TEXTS = frozenset({"true", "false", "1", "0", "yes", "no", ""})
# Properties whose value must be an AppVM with template_for_dispvms; older files may
# name any VM, which Qubes unsets at load.
DISPOSABLE_TEMPLATE_PROPERTIES = frozenset({"default_dispvm", "management_dispvm"})
# dom0's properties that Qubes implies and refuses to read from the file.
ADMINVM_IMPLIED = frozenset({"qid", "name", "uuid"})

_FLOCK_FORMAT = "hhxxxxqqixxxx"  # struct flock on 64-bit Linux


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on the whole file; False if someone else holds one."""
    try:
        if hasattr(fcntl, "F_OFD_SETLK"):
            request = struct.pack(_FLOCK_FORMAT, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


VOLUME_BOOL_KEYS = ("rw", "snap_on_start", "save_on_stop", "ephemeral")
VOLUME_INT_KEYS = ("size", "revisions_to_keep")


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _bool_attr(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


class QubesXmlStore:
    """One qubes.xml file and the lock on it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._locked = False
        self._stamp: tuple[int, int, int] | None = None

    # --- opening and locking ---------------------------------------------

    def open(self, lock: bool = True) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR if lock else os.O_RDONLY)
            except FileNotFoundError:
                raise exc.QubesStoreError(
                    f"{self.path} does not exist (create one with Qubes.create_empty_store "
                    "or `qubesd --create`)"
                ) from None
            except OSError as err:  # immutable (EPERM), read-only filesystem, no access
                how = "writing" if lock else "reading"
                raise exc.QubesStoreError(
                    f"{self.path} cannot be opened for {how}: {err.strerror} (check its "
                    "permissions and attributes, e.g. lsattr)") from None
            if lock and not _try_lock(fd):
                os.close(fd)
                raise exc.QubesStoreError(
                    f"{self.path} is locked by another writer (is qubesd running? "
                    "use the Admin API, or stop it first)"
                )
            st = os.fstat(fd)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino == st.st_ino:
                break
            os.close(fd)  # replaced while we waited for the lock: open the new one
        self._fd, self._locked, self._stamp = fd, lock, _stamp(st)
        if lock:
            self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of a save that was killed before its rename; safe under the lock."""
        for stale in self.path.parent.glob(self.path.name + "~*"):
            log.info("removing %s, left by an interrupted save", stale)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def create(self) -> None:
        """Mark this store as new: the first save creates the file, never overwrites."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._locked = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._locked, self._stamp = None, False, None

    def read_bytes(self) -> bytes:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        chunks, offset = [], 0
        while offset < size:
            chunk = os.pread(self._fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    # --- loading ---------------------------------------------------------

    def load_into(self, app: Qubes) -> None:
        data = self.read_bytes()
        if not data.strip():
            raise exc.QubesStoreError(f"{self.path} is empty")
        try:
            parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
            root = etree.fromstring(data, parser)
        except etree.XMLSyntaxError as err:
            raise exc.QubesStoreError(f"{self.path} is not valid XML: {err}") from None
        try:
            XmlLoader(app, root, self.path).load()
        except exc.QubesStoreError:
            raise
        except (exc.QubesException, ValueError, KeyError, TypeError) as err:
            raise exc.QubesStoreError(f"{self.path}: {err}") from None

    # --- saving ----------------------------------------------------------

    def save(self, app: Qubes) -> None:
        self.write(serialize(app))

    def write(self, data: bytes) -> None:
        """Atomically replace the file with ``data`` (the bytes of :func:`serialize`).

        Separate from serializing so that a server can take a consistent snapshot of
        the model in its event loop and leave the disk work to a thread.
        """
        if not self._locked:
            raise exc.QubesStoreError(f"{self.path} was opened read-only; cannot save")
        self._check_unchanged()
        directory = self.path.parent
        tmp_fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=self.path.name + "~")
        try:
            os.fchmod(tmp_fd, FILE_MODE)
            view = memoryview(data)
            while view:
                written = os.write(tmp_fd, view)
                view = view[written:]
            os.fsync(tmp_fd)
            if not _try_lock(tmp_fd):
                raise exc.QubesStoreError(f"cannot lock the new {self.path}")
            if self._fd is None:
                os.link(tmp_name, self.path)  # first save: never overwrite a file
                os.unlink(tmp_name)
            else:
                os.rename(tmp_name, self.path)
            fsutil.fsync_dir(directory)
        except BaseException:
            os.close(tmp_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        old_fd, self._fd = self._fd, tmp_fd
        self._stamp = _stamp(os.fstat(tmp_fd))
        if old_fd is not None:
            os.close(old_fd)  # releases the lock on the replaced file

    def _check_unchanged(self) -> None:
        if self._fd is None:
            if self.path.exists():
                raise exc.QubesStoreError(f"{self.path} already exists; refusing to overwrite it")
            return
        try:
            current = _stamp(os.stat(self.path))
        except FileNotFoundError:
            current = None
        if current != self._stamp:
            raise exc.QubesStoreError(
                f"{self.path} was changed by another writer since it was loaded; "
                "refusing to overwrite it (reload and redo the change)"
            )


class XmlLoader:
    """Reads one parsed qubes.xml into an empty app, in the reference's order.

    Every element and attribute is checked as it is read; the first bad one stops
    the load with one line naming it (``<domain id="domain-3">: <feature>: ...``).
    """

    def __init__(self, app: Qubes, root: Any, path: Path):
        self.app = app
        self.root = root
        self.path = path
        self.vm_elements: list[tuple[Any, dict[str, str | None]]] = []

    def fail(self, where: str, message: str) -> NoReturn:
        raise exc.QubesStoreError(f"{self.path}: {where}: {message}")

    def load(self) -> None:
        if self.root.tag != "qubes":
            raise exc.QubesStoreError(f"{self.path}: root element is <{self.root.tag}>, "
                                      "expected <qubes>")
        self.load_labels()
        self.load_pools()
        self.load_vm_stubs()
        if type(self.app.domains.get(0)).__name__ != "AdminVM":
            raise exc.QubesStoreError(f"{self.path}: no dom0 (domain-0 of class AdminVM)")
        # VM-to-VM references come last: their checks read the plain properties.
        for stage in (2, 3):
            for vm, props in self.vm_elements:
                self.load_properties(vm, props, self._where(vm), stage)
        self.app.events_enabled = False
        try:
            self.load_properties(self.app, self._properties(self.root, "<qubes>"),
                                 "global <properties>")
        finally:
            self.app.events_enabled = True
        for vm, props in self.vm_elements:
            self.load_properties(vm, props, self._where(vm), 4)
        self.check_loaded()
        for vm, _props in self.vm_elements:
            vm.events_enabled = True
        for vm, _props in self.vm_elements:
            vm.fire_event("domain-load")
        self.app.fire_event("app-loaded")

    @staticmethod
    def _where(vm: BaseVM) -> str:
        return f'<domain id="domain-{vm.qid}"> ({vm.name})'

    def check_loaded(self) -> None:
        """What holds only between elements: no netvm loop, every volume's pool exists."""
        from qubes_core.vm.qubesvm import netvm_loop

        for vm, _props in self.vm_elements:
            loop = netvm_loop(vm)
            if loop:
                self.fail(self._where(vm), "netvm loop: " + " -> ".join(loop))
            for name, config in vm.volume_config.items():
                pool = config.get("pool")
                if pool is not None and pool not in self.app.pools:
                    self.fail(self._where(vm), f'<volume name="{name}">: pool {pool!r} is '
                              "not declared in <pools>")

    def _properties(self, element: Any, where: str) -> dict[str, str | None]:
        container = element.find("properties")
        if container is None:
            return {}
        found: dict[str, str | None] = {}
        for prop in container:
            if not isinstance(prop.tag, str):
                continue  # comments
            name = prop.get("name")
            if prop.tag != "property" or not name:
                self.fail(where, f"<{prop.tag}> in <properties> needs to be a <property> "
                          "with a name")
            if name in found:
                self.fail(where, f'<property name="{name}"> appears twice')
            found[name] = prop.text
        return found

    def load_labels(self) -> None:
        for element in self.root.findall("labels/label"):
            ident = element.get("id", "")
            where = f'<label id="{ident}">'
            if not LABEL_ID_RE.match(ident):
                self.fail(where, "the id must be label-N with N from 1")
            index = int(ident[6:])
            name, color = (element.text or "").strip(), element.get("color", "")
            color = LABEL_COLOR_MIGRATIONS.get(color, color)
            if index in self.app.labels:
                self.fail(where, "this id is already used by label "
                          f"{self.app.labels[index].name!r}")
            if any(label.name == name for label in self.app.labels.values()):
                self.fail(where, f"the name {name!r} is already used by another label")
            try:
                validate_label(name, color)
            except exc.QubesValueError as err:
                self.fail(where, str(err))
            self.app.labels[index] = Label(index, color, name)

    def load_pools(self) -> None:
        for element in self.root.findall("pools/pool"):
            config = dict(element.attrib)
            name, driver = config.pop("name", None), config.pop("driver", None)
            where = f'<pool name="{name}">' if name else "<pool>"
            if not name or not driver:
                self.fail(where, "a pool needs its name and driver")
            if not POOL_NAME_RE.match(name):
                self.fail(where, "invalid pool name")
            if name in self.app.pools:
                self.fail(where, "a pool of this name is already declared")
            try:
                self.app.pools[name] = make_pool(name, driver, **config)
            except (exc.QubesException, ValueError, TypeError) as err:
                self.fail(where, str(err))

    def load_vm_stubs(self) -> None:
        for element in self.root.findall("domains/domain"):
            ident = element.get("id", "")
            where = f'<domain id="{ident}">'
            try:
                vmclass = get_vm_class(element.get("class", ""))
            except (exc.QubesException, KeyError, ValueError):
                self.fail(where, f"unknown class {element.get('class')!r}")
            props = self._properties(element, where)
            vm = vmclass(self.app)
            vm.events_enabled = False
            # Qubes writes dom0 without these; older files have them
            if issubclass(vmclass, AdminVM):
                props.setdefault("qid", "0")
                props.setdefault("name", "dom0")
                props.setdefault("uuid", str(uuidlib.UUID(int=0)))
            for name in ("qid", "uuid", "dispid", "name"):
                if name in props and vmclass.has_property(name):
                    self._load_one(vm, name, props[name], where)
            for name in ("qid", "name"):
                if not vm.property_is_set(name):
                    self.fail(where, f'lacks <property name="{name}">')
            if ident != f"domain-{vm.qid}":
                self.fail(where, f"the id does not match the qid {vm.qid}")
            where = self._where(vm)
            try:
                self.app.domains.add(vm, fire=False)
            except exc.QubesException as err:
                self.fail(where, str(err))
            self.load_vm_collections(vm, element, where)
            self.migrate_vm(vm, props)
            self.vm_elements.append((vm, props))

    def load_vm_collections(self, vm: BaseVM, element: Any, where: str) -> None:
        for feature in element.findall("features/feature"):
            name = feature.get("name")
            try:
                validate_feature_name(name)
            except exc.QubesValueError as err:
                self.fail(where, f"<feature>: {err}")
            if name in vm.features:
                self.fail(where, f'<feature name="{name}"> appears twice')
            vm.features.load(name, feature.text or "")
        for tag in element.findall("tags/tag"):
            name = tag.get("name")
            if not isinstance(name, str) or not TAG_NAME_RE.match(name):
                self.fail(where, f"<tag>: invalid or missing name {name!r}")
            vm.tags.load(name)
        for devices in element.findall("devices"):
            self.load_devices(vm, devices, where)
        for volume in element.findall("volume-config/volume"):
            self.load_volume(vm, volume, where)

    def load_devices(self, vm: BaseVM, devices: Any, where: str) -> None:
        devclass = devices.get("class", "")
        try:
            collection = vm.devices.collection(devclass)
        except exc.QubesValueError as err:
            self.fail(where, f"<devices>: {err}")
        for device in devices.findall("device"):
            here = f'{where}: <devices class="{devclass}">: <device id="{device.get("id")}">'
            options = {}
            for option in device.findall("option"):
                key = option.get("name")
                if not key:
                    self.fail(here, "an <option> lacks its name")
                options[key] = option.text or ""
            identity = options.pop("identity", None) or device.get("identity", "*")
            legacy = device.get("required")
            if legacy is not None:  # R4.2 and earlier: required=True|False
                mode = "required" if _bool_attr(legacy) else "auto-attach"
            else:
                mode = device.get("mode", "required")
            try:
                assignment = DeviceAssignment(device.get("backend-domain", ""),
                                              device.get("id", ""), options, devclass,
                                              mode, identity)
            except exc.QubesValueError as err:
                self.fail(here, str(err))
            if assignment.key in collection._assigned:
                self.fail(here, "assigned twice")
            collection.load(assignment)

    def load_volume(self, vm: BaseVM, volume: Any, where: str) -> None:
        config: dict[str, Any] = dict(volume.attrib)
        name = config.get("name")
        if not name or not VOLUME_NAME_RE.match(name):
            self.fail(where, f"<volume>: invalid or missing name {name!r}")
        here = f'{where}: <volume name="{name}">'
        if name in vm.volume_config:
            self.fail(here, "appears twice")
        for key in VOLUME_BOOL_KEYS:
            if key in config:
                if config[key].strip().lower() not in BOOL_ATTR_TEXTS:
                    self.fail(here, f"{key}={config[key]!r} is not True or False")
                config[key] = _bool_attr(config[key])
        for key in VOLUME_INT_KEYS:
            if key in config:
                text = config[key].strip()
                if not text.isascii() or not text.isdigit() or len(text) > 19:
                    self.fail(here, f"{key}={config[key]!r} is not a whole number >= 0")
                config[key] = int(text)
        vm.volume_config[name] = config

    def migrate_vm(self, vm: BaseVM, props: dict[str, str | None]) -> None:
        """What Qubes changes at load in files of older releases."""
        # service.meminfo-writer off meant "no memory balancing": maxmem=0 now.
        meminfo_writer = vm.features._values.pop("service.meminfo-writer", None)
        if meminfo_writer == "" and vm.qid != 0:
            props["maxmem"] = "0"

    def load_properties(self, holder: PropertyHolder, props: dict[str, str | None],
                        where: str, stage: int | None = None) -> None:
        for name, text in props.items():
            prop = getattr(type(holder), name, None)
            if not isinstance(prop, Property):
                if stage in (None, 2):
                    log.warning("%s: keeping unknown property %r=%r", where, name, text)
                    holder.unknown_properties[name] = text or ""
                continue
            if stage is not None and prop.load_stage != stage:
                continue
            if not prop.persisted:
                continue
            self._load_one(holder, name, text, where)

    def _load_one(self, holder: PropertyHolder, name: str, text: str | None, where: str) -> None:
        prop = holder.property_get_def(name)
        if name in DISPOSABLE_TEMPLATE_PROPERTIES and text:
            target = self.app.domains.get(text)
            if target is not None and not target.template_for_dispvms:
                # As Qubes' loader: a value older releases allowed, dropped, not fatal.
                log.warning("%s: %s=%s is not a template for DispVMs: unset", where, name, text)
                text = ""
        try:
            prop.load(holder, text or "")
        except exc.QubesException as err:
            self.fail(where, f'<property name="{name}">: {err}')


def _sub(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _properties_element(parent: Any, holder: PropertyHolder) -> None:
    """Only the properties that are set; dom0 as Qubes writes it (label, never qid,
    name or uuid)."""
    props = _sub(parent, "properties")
    dom0 = holder if isinstance(holder, BaseVM) and holder.qid == 0 else None
    for prop in holder.property_list():
        name = prop.__name__
        if dom0 is not None and name in ADMINVM_IMPLIED:
            continue
        if dom0 is not None and name == "label":
            _sub(props, "property", prop.serialize(dom0.label), name=name)
        elif prop.persisted and holder.property_is_set(name):
            _sub(props, "property", prop.serialize(holder.property_own_value(name)) or None,
                 name=name)
    for name, text in sorted(holder.unknown_properties.items()):
        _sub(props, "property", text or None, name=name)


def _volume_attrs(config: dict[str, Any]) -> dict[str, str]:
    attrs = {}
    for key, value in config.items():
        if value is None:
            continue
        attrs[key] = str(value) if not isinstance(value, bool) else ("True" if value else "False")
    return attrs


def _domain_element(vm: BaseVM) -> Any:
    domain = etree.Element("domain", id=f"domain-{vm.qid}", **{"class": vm.klass})
    _properties_element(domain, vm)
    features = _sub(domain, "features")
    for key, value in vm.features.items():
        _sub(features, "feature", value or None, name=key)
    tags = _sub(domain, "tags")
    for tag in vm.tags:
        _sub(tags, "tag", name=tag)
    for devclass, collection in sorted(vm.devices.items()):
        devices = _sub(domain, "devices", **{"class": devclass})
        for assignment in collection:
            device = _sub(devices, "device", **{"backend-domain": assignment.backend_domain,
                                                "id": assignment.ident,
                                                "mode": assignment.mode,
                                                "identity": assignment.identity})
            for key, value in sorted(assignment.options.items()):
                _sub(device, "option", value, name=key)
    if vm.volume_config:
        volumes = _sub(domain, "volume-config")
        for name in sorted(vm.volume_config):
            _sub(volumes, "volume", **_volume_attrs(vm.volume_config[name]))
    return domain


def _volume_signature(vm: BaseVM) -> tuple[Any, ...]:
    """What the volume config holds now (the storage layer edits it without events)."""
    return tuple((name, tuple(config.items())) for name, config in vm.volume_config.items())


# vm -> (change counter, volume signature, the VM's <domain> bytes). Serializing a
# <domain> is most of a save; a VM that fired no event and whose volume config is
# the same since its last save is written from here.
_domain_cache: weakref.WeakKeyDictionary[BaseVM, tuple[int, tuple[Any, ...], bytes]] = (
    weakref.WeakKeyDictionary())


def _domain_bytes(vm: BaseVM, use_cache: bool) -> bytes:
    key = (vm.change_counter, _volume_signature(vm))
    cached = _domain_cache.get(vm) if use_cache else None
    if cached is not None and cached[:2] == key:
        return cached[2]
    domain = _domain_element(vm)
    etree.indent(domain, space="  ", level=2)
    data = b"    " + etree.tostring(domain, encoding="utf-8") + b"\n"
    _domain_cache[vm] = (*key, data)
    return data


def _by_name(vm: BaseVM) -> str:
    return vm.name


def serialize(app: Qubes, use_cache: bool = True) -> bytes:
    """The whole model as qubes.xml bytes.

    ``use_cache=False`` rebuilds every VM's part (the cache must never matter:
    the tests compare both).
    """
    root = etree.Element("qubes")
    labels = _sub(root, "labels")
    for index in sorted(app.labels):
        label = app.labels[index]
        _sub(labels, "label", label.name, id=label.xml_id, color=label.color)
    pools = _sub(root, "pools")
    for pool in app.pools.values():  # in the order they were added, as Qubes writes them
        _sub(pools, "pool", **pool.xml_attributes())
    _properties_element(root, app)
    _sub(root, "domains")
    head, placeholder, tail = etree.tostring(
        root, encoding="utf-8", xml_declaration=True, pretty_print=True
    ).rpartition(b"  <domains/>\n")
    assert placeholder, "serialized qubes.xml lacks its <domains/> placeholder"
    chunks = [_domain_bytes(vm, use_cache) for vm in sorted(app.domains, key=_by_name)]
    return b"".join([head, b"  <domains>\n", *chunks, b"  </domains>\n", tail])
