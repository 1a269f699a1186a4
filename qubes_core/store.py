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
import struct
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree

from qubes_core import exc, fsutil
from qubes_core.devices import DeviceAssignment
from qubes_core.labels import Label, validate_label
from qubes_core.properties import PropertyHolder
from qubes_core.storage import make_pool
from qubes_core.vm import get_vm_class

if TYPE_CHECKING:
    from qubes_core.app import Qubes

log = logging.getLogger("qubes.store")

FILE_VERSION = "3.0"
FILE_MODE = 0o660

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
    """Reads one parsed qubes.xml into an empty app, in the reference's order."""

    def __init__(self, app: Qubes, root: Any, path: Path):
        self.app = app
        self.root = root
        self.path = path
        self.vm_elements: list[tuple[Any, dict[str, str | None]]] = []

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
                self.load_properties(vm, props, vm.name, stage)
        self.app.events_enabled = False
        try:
            self.load_properties(self.app, self._properties(self.root), "the system")
        finally:
            self.app.events_enabled = True
        for vm, props in self.vm_elements:
            self.load_properties(vm, props, vm.name, 4)
        for vm, _props in self.vm_elements:
            vm.events_enabled = True
        for vm, _props in self.vm_elements:
            vm.fire_event("domain-load")
        self.app.fire_event("app-loaded")

    @staticmethod
    def _properties(element: Any) -> dict[str, str | None]:
        container = element.find("properties")
        if container is None:
            return {}
        return {prop.get("name"): prop.text for prop in container.findall("property")}

    def load_labels(self) -> None:
        for element in self.root.findall("labels/label"):
            ident = element.get("id", "")
            if not ident.startswith("label-") or not ident[6:].isdigit():
                raise exc.QubesStoreError(f"{self.path}: invalid label id {ident!r}")
            name, color = (element.text or "").strip(), element.get("color", "")
            validate_label(name, color)
            self.app.labels[int(ident[6:])] = Label(int(ident[6:]), color, name)

    def load_pools(self) -> None:
        for element in self.root.findall("pools/pool"):
            config = dict(element.attrib)
            name, driver = config.pop("name", None), config.pop("driver", None)
            if not name or not driver:
                raise exc.QubesStoreError(f"{self.path}: a <pool> lacks its name or driver")
            self.app.pools[name] = make_pool(name, driver, **config)

    def load_vm_stubs(self) -> None:
        for element in self.root.findall("domains/domain"):
            vmclass = get_vm_class(element.get("class", ""))
            props = self._properties(element)
            vm = vmclass(self.app)
            vm.events_enabled = False
            for name in ("qid", "uuid", "dispid", "name"):
                if name in props and hasattr(vmclass, name):
                    self._load_one(vm, name, props[name], element.get("id", "?"))
            if "qid" not in vm._property_values or "name" not in vm._property_values:
                raise exc.QubesStoreError(
                    f"{self.path}: domain {element.get('id', '?')} lacks qid or name"
                )
            self.app.domains.add(vm, fire=False)
            self.load_vm_collections(vm, element)
            self.vm_elements.append((vm, props))

    def load_vm_collections(self, vm: Any, element: Any) -> None:
        for feature in element.findall("features/feature"):
            vm.features.load(feature.get("name"), feature.text or "")
        for tag in element.findall("tags/tag"):
            vm.tags.load(tag.get("name"))
        for devices in element.findall("devices"):
            devclass = devices.get("class", "")
            if devclass not in vm.devices:
                log.warning("%s: dropping unknown device class %r", vm.name, devclass)
                continue
            for device in devices.findall("device"):
                options = {opt.get("name"): opt.text or "" for opt in device.findall("option")}
                vm.devices[devclass].load(DeviceAssignment(
                    device.get("backend-domain", ""), device.get("id", ""), options, devclass))
        for volume in element.findall("volume-config/volume"):
            config: dict[str, Any] = dict(volume.attrib)
            for key in VOLUME_BOOL_KEYS:
                if key in config:
                    config[key] = _bool_attr(config[key])
            for key in VOLUME_INT_KEYS:
                if key in config:
                    config[key] = int(config[key])
            vm.volume_config[config["name"]] = config

    def load_properties(self, holder: PropertyHolder, props: dict[str, str | None],
                        where: str, stage: int | None = None) -> None:
        for name, text in props.items():
            prop = getattr(type(holder), name, None)
            if prop is None or not hasattr(prop, "load_stage"):
                if stage in (None, 2):
                    log.warning("%s: keeping unknown property %r=%r", where, name, text)
                    holder.unknown_properties[name] = text or ""
                continue
            if stage is not None and prop.load_stage != stage:
                continue
            if not prop.persisted:
                continue
            self._load_one(holder, name, text, where)

    def _load_one(self, holder: Any, name: str, text: str | None, where: str) -> None:
        prop = holder.property_get_def(name)
        try:
            if text in (None, "") and getattr(prop, "allow_none", False):
                holder._property_values[name] = None
            else:
                prop.load(holder, text or "")
        except exc.QubesException as err:
            raise exc.QubesStoreError(f"{self.path}: {where}: property {name}: {err}") from None


def _sub(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _properties_element(parent: Any, holder: Any) -> None:
    props = _sub(parent, "properties")
    for prop in holder.property_list():
        name = prop.__name__
        if prop.persisted and name in holder._property_values:
            _sub(props, "property", prop.serialize(holder._property_values[name]) or None,
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


def _domain_element(vm: Any) -> Any:
    domain = etree.Element("domain", id=f"domain-{vm.qid}", **{"class": vm.klass()})
    _properties_element(domain, vm)
    features = _sub(domain, "features")
    for key, value in vm.features.items():
        _sub(features, "feature", value or None, name=key)
    for devclass, collection in sorted(vm.devices.items()):
        devices = _sub(domain, "devices", **{"class": devclass})
        for assignment in collection:
            device = _sub(devices, "device", **{"backend-domain": assignment.backend_domain,
                                                "id": assignment.ident})
            for key, value in sorted(assignment.options.items()):
                _sub(device, "option", value, name=key)
    tags = _sub(domain, "tags")
    for tag in vm.tags:
        _sub(tags, "tag", name=tag)
    if vm.volume_config:
        volumes = _sub(domain, "volume-config")
        for name in sorted(vm.volume_config):
            _sub(volumes, "volume", **_volume_attrs(vm.volume_config[name]))
    return domain


def _volume_signature(vm: Any) -> tuple[Any, ...]:
    """What the volume config holds now (the storage layer edits it without events)."""
    return tuple((name, tuple(config.items())) for name, config in vm.volume_config.items())


# vm -> (change counter, volume signature, the VM's <domain> bytes). Serializing a
# <domain> is most of a save; a VM that fired no event and whose volume config is
# the same since its last save is written from here.
_domain_cache: weakref.WeakKeyDictionary[Any, tuple[int, tuple[Any, ...], bytes]] = (
    weakref.WeakKeyDictionary())


def _domain_bytes(vm: Any, use_cache: bool) -> bytes:
    key = (vm.change_counter, _volume_signature(vm))
    cached = _domain_cache.get(vm) if use_cache else None
    if cached is not None and cached[:2] == key:
        return cached[2]
    domain = _domain_element(vm)
    etree.indent(domain, space="  ", level=2)
    data = b"    " + etree.tostring(domain, encoding="utf-8") + b"\n"
    _domain_cache[vm] = (*key, data)
    return data


def serialize(app: Qubes, use_cache: bool = True) -> bytes:
    """The whole model as qubes.xml bytes.

    ``use_cache=False`` rebuilds every VM's part (the cache must never matter:
    the tests compare both).
    """
    root = etree.Element("qubes", version=FILE_VERSION)
    labels = _sub(root, "labels")
    for index in sorted(app.labels):
        label = app.labels[index]
        _sub(labels, "label", label.name, id=label.xml_id, color=label.color)
    pools = _sub(root, "pools")
    for name in sorted(app.pools):
        _sub(pools, "pool", **app.pools[name].xml_attributes())
    _properties_element(root, app)
    _sub(root, "domains")
    head, placeholder, tail = etree.tostring(
        root, encoding="utf-8", xml_declaration=True, pretty_print=True
    ).rpartition(b"  <domains/>\n")
    assert placeholder, "serialized qubes.xml lacks its <domains/> placeholder"
    chunks = [_domain_bytes(vm, use_cache) for vm in app.domains]
    return b"".join([head, b"  <domains>\n", *chunks, b"  </domains>\n", tail])
