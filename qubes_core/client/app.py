"""The client-side model: the system, its VMs, their properties, features and tags.

Reading a property outside a cache scope costs one ``property.Get``. Inside
``with app.cache():`` the first property read of a VM fetches all of its
properties with one ``GetAll``, the VM list is fetched once, and every other
read (``List``, ``Get``, ``Info``, ...) is asked once; leaving the scope (or any
call through this client that is not a read) drops what was cached. Listing
all VMs with ten properties each is then one call per VM. A run of work made of
many steps (a Salt state run) keeps the same cache across its steps with
:meth:`Qubes.keep_reads`, under the same rule: a write drops it.
"""

from __future__ import annotations

from qubes_core import exc
from qubes_core.client.transport import Transport
from qubes_core.sockets import admin_socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing: every tool loads this
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path
    from typing import Any

_MISSING = object()
# Methods that only read: their replies may be reused while nothing was written.
READ_METHODS = frozenset({"List", "Get", "GetAll", "GetDefault", "Help", "Info",
                          "ListSnapshots", "CheckWithTemplate", "CheckWithNetvm",
                          "CheckWithAdminVM", "CheckWithTemplateAndAdminVM", "Available",
                          "Assigned", "Attached", "ListDrivers"})


def unescape_line_value(text: str) -> str:
    """Undo the ``GetAll`` escaping (``\\\\`` and ``\\n``)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def getall_line(reply: str, name: str) -> str | None:
    """What follows ``NAME`` on the line of property ``name`` in a ``GetAll`` reply (one
    ``NAME default=D type=T VALUE`` line per property); None when there is none.

    Two ``str.find`` calls rather than splitting the reply: a listing reads a few of
    the fifty-odd properties of each of many VMs.
    """
    head = name + " "
    if reply.startswith(head):
        start = len(head)
    else:
        found = reply.find("\n" + head)
        if found < 0:
            return None
        start = found + 1 + len(head)
    end = reply.find("\n", start)
    return reply[start:] if end < 0 else reply[start:end]


def encode_value(value: Any) -> str:
    """A Python value as ``property.Set`` sends it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    name = getattr(value, "name", None)
    if isinstance(value, ClientVM) and name is not None:
        return str(name)
    return str(value)


class Label(str):
    """A label name that can also tell its colour and index (one call each)."""

    def __new__(cls, app: Qubes, name: str) -> Label:
        obj = super().__new__(cls, name)
        obj.app = app  # type: ignore[attr-defined]
        return obj

    @property
    def name(self) -> str:
        return str(self)

    @property
    def color(self) -> str:
        return self.app.call("admin.label.Get", arg=str(self))  # type: ignore[attr-defined]

    @property
    def index(self) -> int:  # type: ignore[override]  # the label's number, as in qubesadmin
        return int(self.app.call("admin.label.Index", arg=str(self)))  # type: ignore


class PropertyValues:
    """Typed values of one holder from ``Get``/``GetAll`` lines."""

    @staticmethod
    def parse(app: Qubes, line: str, escaped: bool) -> tuple[bool, Any]:
        """``default=X type=T VALUE`` -> (is_default, value)."""
        default_part, type_part, value = (line.split(" ", 2) + ["", ""])[:3]
        if not default_part.startswith("default=") or not type_part.startswith("type="):
            raise exc.QubesException(f"malformed property reply: {line!r}")
        is_default = default_part == "default=True"
        kind = type_part[len("type="):]
        if escaped:
            value = unescape_line_value(value)
        return is_default, PropertyValues.convert(app, kind, value)

    @staticmethod
    def convert(app: Qubes, kind: str, value: str) -> Any:
        if kind == "vm":
            return app.domains.get_blind(value) if value else None
        if kind == "int":
            return int(value) if value else None
        if kind == "bool":
            return value == "True" if value else None
        if kind == "label":
            return Label(app, value) if value else None
        return value


class PropertyHolderClient:
    """Attribute access mapped onto ``<prefix>property.*`` of one destination."""

    _own = frozenset({"app", "name", "_dest", "_prefix", "_cache", "features", "tags",
                      "devices", "_klass", "_state"})

    def __init__(self, app: Qubes, dest: str, prefix: str):
        object.__setattr__(self, "app", app)
        object.__setattr__(self, "_dest", dest)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_cache", None)

    def _call(self, suffix: str, arg: str = "", payload: str | bytes = b"") -> str:
        return self.app.call(self._prefix + suffix, self._dest, arg, payload)

    def _all(self) -> str:
        """The ``GetAll`` reply, asked once per cache generation; its lines are split
        only when read (see :func:`getall_line`)."""
        cache = self._cache
        if not self.app.caching or cache is None or cache[0] != self.app._generation:
            cache = (self.app._generation, self._call("GetAll"))
            object.__setattr__(self, "_cache", cache)
        return cache[1]

    def _get(self, name: str) -> tuple[bool, Any]:
        if self.app.caching:
            line = getall_line(self._all(), name)
            if line is None:
                raise exc.QubesNoSuchPropertyError(self._dest, name)
            return PropertyValues.parse(self.app, line, escaped=True)
        return PropertyValues.parse(self.app, self._call("Get", name), escaped=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._get(name)[1]

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in self._own:
            object.__setattr__(self, name, value)
            return
        self._call("Set", name, encode_value(value))
        self.app.invalidate()

    def __delattr__(self, name: str) -> None:
        if name.startswith("_") or name in self._own:
            object.__delattr__(self, name)
            return
        self._call("Reset", name)
        self.app.invalidate()

    def property_list(self) -> list[str]:
        return self._call("List").split()

    def property_get_all(self) -> dict[str, Any]:
        """Every property's value (one ``GetAll``)."""
        values = {}
        for line in self._all().splitlines():
            name, _, rest = line.partition(" ")
            values[name] = PropertyValues.parse(self.app, rest, escaped=True)[1]
        return values

    def property_get_some(self, names: Iterable[str]) -> dict[str, Any]:
        """The values of those of ``names`` this holder has (one ``GetAll``; only their
        lines are read)."""
        reply = self._all()
        values = {}
        for name in names:
            line = getall_line(reply, name)
            if line is not None:
                values[name] = PropertyValues.parse(self.app, line, escaped=True)[1]
        return values

    def property_is_default(self, name: str) -> bool:
        return self._get(name)[0]

    def property_get_default(self, name: str) -> Any:
        text = self._call("GetDefault", name)
        if not text:
            raise AttributeError(f"property {name!r} has no default")
        type_part, _, value = text.partition(" ")
        return PropertyValues.convert(self.app, type_part[len("type="):], value)

    def property_help(self, name: str) -> str:
        return self._call("Help", name)


class Features:
    """``vm.features``: a mapping over ``admin.vm.feature.*``."""

    def __init__(self, vm: ClientVM):
        self.vm = vm

    def _call(self, suffix: str, arg: str = "", payload: str = "") -> str:
        return self.vm.app.call("admin.vm.feature." + suffix, self.vm.name, arg, payload)

    def __getitem__(self, key: str) -> str:
        return self._call("Get", key)

    def __setitem__(self, key: str, value: Any) -> None:
        if value is True:
            value = "1"
        elif value is False:
            value = ""
        self._call("Set", key, str(value))

    def __delitem__(self, key: str) -> None:
        self._call("Remove", key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._call("List").split())

    def __contains__(self, key: object) -> bool:
        return key in self._call("List").split()

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> list[tuple[str, str]]:
        return [(key, self[key]) for key in self]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except exc.QubesFeatureNotFoundError:
            return default

    def check_with_template(self, key: str, default: Any = _MISSING) -> Any:
        return self._check("CheckWithTemplate", key, default)

    def check_with_netvm(self, key: str, default: Any = _MISSING) -> Any:
        return self._check("CheckWithNetvm", key, default)

    def check_with_adminvm(self, key: str, default: Any = _MISSING) -> Any:
        return self._check("CheckWithAdminVM", key, default)

    def _check(self, suffix: str, key: str, default: Any) -> Any:
        try:
            return self._call(suffix, key)
        except exc.QubesFeatureNotFoundError:
            if default is _MISSING:
                raise
            return default


class Tags:
    """``vm.tags``: a set over ``admin.vm.tag.*``."""

    def __init__(self, vm: ClientVM):
        self.vm = vm

    def _call(self, suffix: str, arg: str = "") -> str:
        return self.vm.app.call("admin.vm.tag." + suffix, self.vm.name, arg)

    def add(self, tag: str) -> None:
        self._call("Set", tag)

    def remove(self, tag: str) -> None:
        self._call("Remove", tag)

    def discard(self, tag: str) -> None:
        if tag in self:
            self.remove(tag)

    def update(self, tags: Any) -> None:
        for tag in tags:
            self.add(tag)

    def __contains__(self, tag: object) -> bool:
        return self._call("Get", str(tag)) == "1"

    def __iter__(self) -> Iterator[str]:
        return iter(self._call("List").split())

    def __len__(self) -> int:
        return len(self._call("List").split())


class PciDevices:
    """``vm.devices['pci']``: assignments of host PCI devices (Qubes 4.4 wire form)."""

    def __init__(self, vm: ClientVM):
        self.vm = vm

    def _call(self, suffix: str, arg: str = "", payload: str = "") -> str:
        return self.vm.app.call("admin.vm.device.pci." + suffix, self.vm.name, arg, payload)

    def available(self) -> list[str]:
        """Ports of the PCI devices dom0 exposes (``00_1f.2``)."""
        return [line.split(":", 1)[0] for line in self._call("Available").splitlines()]

    def assigned(self) -> dict[str, dict[str, str]]:
        """``{"dom0+00_1f.2": {option: value}}``."""
        from qubes_core.devices import unpack

        found = {}
        for line in self._call("Assigned").splitlines():
            head, _, rest = line.partition(" ")
            _properties, options = unpack(rest)
            found[head.split(":", 1)[0]] = options
        return found

    def assign(self, backend: str, ident: str, **options: str) -> None:
        from qubes_core.devices import pack

        fields = [pack("device_id", "*"), pack("port_id", ident), pack("devclass", "pci"),
                  pack("backend_domain", backend), pack("mode", "required")]
        fields += [pack("_" + key, value) for key, value in options.items()]
        self._call("Assign", f"{backend}+{ident}", " ".join(fields))

    def unassign(self, backend: str, ident: str) -> None:
        self._call("Unassign", f"{backend}+{ident}")


class ClientVM(PropertyHolderClient):
    """One domain, seen through the API."""

    def __init__(self, app: Qubes, name: str, klass: str | None = None,
                 state: str | None = None):
        super().__init__(app, name, "admin.vm.property.")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_klass", klass)
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "features", Features(self))
        object.__setattr__(self, "tags", Tags(self))
        object.__setattr__(self, "devices", {"pci": PciDevices(self)})

    def __repr__(self) -> str:
        return f"<ClientVM {self.name}>"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ClientVM):
            return other.name == self.name and other.app is self.app
        if isinstance(other, str):
            return other == self.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __lt__(self, other: ClientVM) -> bool:
        return self.name < other.name

    @property
    def klass(self) -> str:
        if self._klass is None:
            self._fill_from_list()
        return self._klass  # type: ignore[return-value]

    def _fill_from_list(self) -> None:
        line = self.app.call("admin.vm.List", self.name)
        _, klass, state = parse_vm_line(line)
        object.__setattr__(self, "_klass", klass)
        object.__setattr__(self, "_state", state)

    def get_power_state(self) -> str:
        if self.app.caching and self._state is not None:
            return self._state
        self._fill_from_list()
        return self._state  # type: ignore[return-value]

    def is_running(self) -> bool:
        return self.get_power_state() not in ("Halted", "Crashed", "Dying")

    def is_halted(self) -> bool:
        return self.get_power_state() == "Halted"

    def current_state(self) -> dict[str, str]:
        text = self.app.call("admin.vm.CurrentState", self.name)
        return dict(item.split("=", 1) for item in text.split())

    def _power(self, action: str, arg: str = "") -> None:
        self.app.call("admin.vm." + action, self.name, arg)
        self.app.invalidate()

    def start(self) -> None:
        self._power("Start")

    def shutdown(self, force: bool = False, wait: bool = False) -> None:
        self._power("Shutdown", "+".join(o for o, on in (("force", force), ("wait", wait))
                                         if on))

    def kill(self) -> None:
        self._power("Kill")

    def pause(self) -> None:
        self._power("Pause")

    def unpause(self) -> None:
        self._power("Unpause")


def parse_vm_line(line: str) -> tuple[str, str, str]:
    """``NAME class=C state=S uuid=U`` -> (name, class, state)."""
    name, *fields = line.split()
    values = dict(field.split("=", 1) for field in fields if "=" in field)
    return name, values.get("class", ""), values.get("state", "")


class VMCollectionClient:
    """``app.domains``: the VMs, listed with ``admin.vm.List``."""

    def __init__(self, app: Qubes):
        self.app = app
        self._objects: dict[str, ClientVM] = {}
        self._listed: tuple[int, list[str]] | None = None

    def get_blind(self, name: str) -> ClientVM:
        """The object for ``name``, without asking whether it exists."""
        vm = self._objects.get(name)
        if vm is None:
            vm = self._objects[name] = ClientVM(self.app, name)
        return vm

    def _names(self) -> list[str]:
        if self.app.caching and self._listed and self._listed[0] == self.app._generation:
            return self._listed[1]
        names = []
        for line in self.app.call("admin.vm.List").splitlines():
            name, klass, state = parse_vm_line(line)
            vm = self.get_blind(name)
            object.__setattr__(vm, "_klass", klass)
            object.__setattr__(vm, "_state", state)
            names.append(name)
        self._listed = (self.app._generation, names)
        return names

    def __iter__(self) -> Iterator[ClientVM]:
        return iter([self.get_blind(name) for name in self._names()])

    def __len__(self) -> int:
        return len(self._names())

    def keys(self) -> list[str]:
        return list(self._names())

    def __contains__(self, key: object) -> bool:
        return str(key) in self._names()

    def __getitem__(self, key: Any) -> ClientVM:
        name = str(key)
        if name not in self._names():
            raise exc.QubesVMNotFoundError(name)
        return self.get_blind(name)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def forget(self, name: str) -> None:
        self._objects.pop(name, None)


class Qubes(PropertyHolderClient):
    """The system behind one qubesd socket.

    When none listens on the installation's socket, ``start`` starts a qubesd at once
    (it then serves whatever the caller runs, other processes too), ``start_on_call``
    lets the first call that finds none start it (no connection is made only to see
    whether one listens: qubesd logs each such as a malformed call); :meth:`close`
    stops it.
    """

    _own = PropertyHolderClient._own | frozenset({
        "transport", "domains", "caching", "_generation", "_embedded", "_cache_depth",
        "_replies", "_run"})

    def __init__(self, base_dir: str | Path | None = None, *, socket_path: str | Path | None = None,
                 src: str = "dom0", start: bool = False, start_on_call: bool = False,
                 runtime: str | None = None, create: bool = False):
        super().__init__(self, "dom0", "admin.property.")
        path = socket_path if socket_path is not None else admin_socket(base_dir)
        object.__setattr__(self, "_embedded", None)
        start_qubesd = None
        if start and socket_path is None:
            # Imported only here: a client of a running qubesd need not load it.
            from qubes_core.client.embedded import EmbeddedQubesd

            embedded = EmbeddedQubesd.start_if_needed(base_dir, runtime=runtime, create=create)
            object.__setattr__(self, "_embedded", embedded)
        elif start_on_call and socket_path is None:
            def start_qubesd() -> None:
                self._start_embedded(base_dir, runtime, create)
        object.__setattr__(self, "transport", Transport(path, src, start=start_qubesd))
        object.__setattr__(self, "domains", VMCollectionClient(self))
        object.__setattr__(self, "caching", False)
        object.__setattr__(self, "_cache_depth", 0)
        object.__setattr__(self, "_generation", 0)
        object.__setattr__(self, "_replies", {})
        object.__setattr__(self, "_run", None)

    def __repr__(self) -> str:
        return f"<client Qubes at {self.transport.socket_path}>"

    def _start_embedded(self, base_dir: str | Path | None, runtime: str | None,
                        create: bool) -> None:
        """Start a qubesd for the installation (a call found none), stopped by :meth:`close`."""
        from qubes_core.client.embedded import EmbeddedQubesd

        embedded = EmbeddedQubesd.start(base_dir, runtime=runtime, create=create)
        object.__setattr__(self, "_embedded", embedded)

    def close(self) -> None:
        """Stop the qubesd this client started, if any."""
        if self._embedded is not None:
            self._embedded.stop()
            object.__setattr__(self, "_embedded", None)

    def __enter__(self) -> Qubes:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- calls and caching -------------------------------------------------------

    def call(self, method: str, dest: str = "dom0", arg: str = "",
             payload: str | bytes = b"") -> str:
        if not self.caching:
            return self.transport.call_text(method, dest, arg, payload)
        if method.rpartition(".")[2] not in READ_METHODS:
            try:
                return self.transport.call_text(method, dest, arg, payload)
            finally:
                self.invalidate()
        key = (method, dest, arg, payload)
        reply = self._replies.get(key)
        if reply is None:
            reply = self._replies[key] = self.transport.call_text(method, dest, arg, payload)
        return reply

    def invalidate(self) -> None:
        """Forget what was cached (called after every write through this client)."""
        object.__setattr__(self, "_generation", self._generation + 1)
        self._replies.clear()

    def _set_caching(self) -> None:
        on = bool(self._cache_depth) or self._run is not None
        if not on:
            self.invalidate()
        object.__setattr__(self, "caching", on)

    def cache(self) -> CacheScope:
        """Within this scope, read each VM's properties once (``GetAll``)."""
        return CacheScope(self)

    def keep_reads(self, run: object | None) -> None:
        """Reuse read replies for as long as calls come with the same ``run``.

        A different ``run`` starts afresh; ``None`` stops reusing (every read
        asks qubesd again). Writes through this client drop the replies either way.
        """
        if run is not None and run == self._run:
            return
        object.__setattr__(self, "_run", run)
        self.invalidate()
        self._set_caching()

    # --- collections ---------------------------------------------------------------

    @property
    def labels(self) -> list[Label]:
        return [Label(self, name) for name in self.call("admin.label.List").split()]

    def vm_classes(self) -> list[str]:
        return self.call("admin.vmclass.List").split()

    def add_new_vm(self, cls: str, name: str, label: str, template: str | None = None,
                   pool: str | None = None, pools: dict[str, str] | None = None) -> ClientVM:
        params = f"name={name} label={label}"
        method = "admin.vm.Create." + cls
        if pool or pools:
            method = "admin.vm.CreateInPool." + cls
            if pool:
                params += f" pool={pool}"
            for volume, volume_pool in (pools or {}).items():
                params += f" pool:{volume}={volume_pool}"
        self.call(method, "dom0", str(template) if template else "", params)
        self.invalidate()
        return self.domains.get_blind(name)

    def create_disposable(self, appvm: str | None = None) -> ClientVM:
        name = self.call("admin.vm.CreateDisposable", str(appvm) if appvm else "dom0")
        self.invalidate()
        return self.domains.get_blind(name)

    def remove_vm(self, vm: str | ClientVM) -> None:
        self.call("admin.vm.Remove", str(vm))
        self.domains.forget(str(vm))
        self.invalidate()

    def add_label(self, name: str, color: str) -> Label:
        self.call("admin.label.Create", arg=name, payload=color)
        return Label(self, name)

    def remove_label(self, name: str) -> None:
        self.call("admin.label.Remove", arg=name)

    def events(self, dest: str = "dom0") -> Iterator[tuple[str, str, dict[str, str]]]:
        """The event stream (``admin.Events``); close the generator to hang up."""
        return self.transport.events(dest)


class CacheScope:
    """``with app.cache():`` caching is on inside (scopes nest); the outermost one's end
    drops what was cached. A class, not a ``contextlib`` generator: every tool loads
    this module, and loading contextlib would add to a tool's start-up."""

    def __init__(self, app: Qubes):
        self.app = app

    def __enter__(self) -> Qubes:
        object.__setattr__(self.app, "_cache_depth", self.app._cache_depth + 1)
        object.__setattr__(self.app, "caching", True)
        return self.app

    def __exit__(self, *exc_info: object) -> None:
        object.__setattr__(self.app, "_cache_depth", self.app._cache_depth - 1)
        self.app._set_caching()


def connect(base_dir: str | Path | None = None, **kwargs: Any) -> Qubes:
    """A client of the installation; starts a qubesd for it when none listens."""
    kwargs.setdefault("start", True)
    return Qubes(base_dir, **kwargs)
