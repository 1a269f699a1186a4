"""Typed properties of the app and of VMs.

A property is declared once, on its class, with its type, its default (a
constant or a callable of the holder), whether it may change after it was first
set (``write_once``), whether ``clone_properties`` copies it, and a docstring
that is the user's documentation. Setting fires ``property-pre-set:NAME`` (a
handler may veto by raising) and ``property-set:NAME``; resetting to the
default fires ``property-pre-reset:NAME`` and ``property-reset:NAME``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, Self, overload

from qubes_core import exc
from qubes_core.events import Emitter

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar

#: The type of a property's value (Any when its declaration does not say).
T = TypeVar("T", default=Any)

class _NoDefault:
    """Type of :data:`_NO_DEFAULT`."""


#: The default of a property that has none (reading it unset is an AttributeError).
_NO_DEFAULT = _NoDefault()

# No property holds a number that does not fit in 64 signed bits (the runtime's and
# libvirt's limit); a longer text is refused before it is converted.
MAX_INT = 2**63 - 1
MAX_INT_DIGITS = len(str(MAX_INT))

TRUE_STRINGS = frozenset({"1", "true", "yes", "on"})
FALSE_STRINGS = frozenset({"0", "false", "no", "off", ""})


def bool_type(value: Any) -> bool:
    """Coerce what a user or the API may send for a boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in TRUE_STRINGS:
            return True
        if lowered in FALSE_STRINGS:
            return False
    raise ValueError(f"{value!r} is not a boolean (use True or False)")


def int_type(value: Any) -> int:
    """Coerce an integer, refusing floats and booleans that would silently truncate."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise ValueError(f"{value!r} is out of range (beyond 64 bits)")
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] == "-" else text
        # ASCII only: str.isdigit() also takes other scripts' digits and superscripts
        if digits.isascii() and digits.isdigit():
            if len(digits) > MAX_INT_DIGITS:
                raise ValueError(f"{value!r} is out of range (beyond 64 bits)")
            return int_type(int(text))
    raise ValueError(f"{value!r} is not an integer")


def optional_int_type(value: Any) -> int | None:
    """An integer, or None for ``""``/None (e.g. a time that has not happened yet)."""
    if value is None or value == "":
        return None
    return int_type(value)


def str_type(value: Any) -> str:
    """Type of text properties: only a string is taken, nothing is converted to one."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


API_TYPES: dict[Any, str] = {bool_type: "bool", int_type: "int", optional_int_type: "int",
                             bool: "bool", int: "int"}


class Property(Generic[T]):
    """A typed, evented attribute stored in qubes.xml; read on a holder, it is a ``T``
    (what its ``type`` returns, or its default)."""

    api_type = "str"

    def __init__(
        self,
        name: str,
        *,
        type: Callable[[Any], T] | None = None,  # noqa: A002
        default: T | Callable[[Any], T] | _NoDefault = _NO_DEFAULT,
        setter: Callable[[Any, Property, Any], Any] | None = None,
        choices: Iterable[str] | None = None,
        write_once: bool = False,
        clone: bool = True,
        persisted: bool = True,
        load_stage: int = 2,
        doc: str = "",
    ):
        self.__name__ = name
        converter: Callable[[Any], Any] | None = type
        if type is bool:
            converter = bool_type
        elif type is int:
            converter = int_type
        elif type is str:
            converter = str_type
        self.type = converter
        self._default = default
        self._setter = setter
        self.choices = tuple(choices) if choices is not None else None
        self.write_once = write_once
        self.clone = clone
        self.persisted = persisted
        self.load_stage = load_stage
        self.__doc__ = doc
        if converter in API_TYPES:
            self.api_type = API_TYPES[converter]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__}>"

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.__name__:
            raise TypeError(f"property {self.__name__!r} bound to attribute {name!r}")

    # --- reading -----------------------------------------------------------

    @property
    def has_default(self) -> bool:
        return self._default is not _NO_DEFAULT

    def defaults_to(self, default: object) -> bool:
        """Whether the property's default is ``default`` (a value, or the function that
        computes it)."""
        return self._default is default

    def get_default(self, holder: Any) -> Any:
        if self._default is _NO_DEFAULT:
            raise AttributeError(f"property {self.__name__!r} of {holder} is not set")
        if callable(self._default):
            return self._default(holder)
        return self._default

    @overload
    def __get__(self, holder: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, holder: object, owner: type | None = None) -> T: ...

    def __get__(self, holder: Any, owner: type | None = None) -> Any:
        if holder is None:
            return self
        try:
            return holder._property_values[self.__name__]
        except KeyError:
            return self.get_default(holder)

    # --- writing -----------------------------------------------------------

    def coerce(self, holder: Any, value: Any) -> Any:
        """Turn ``value`` into this property's type or raise QubesPropertyValueError."""
        try:
            if self.type is not None:
                value = self.type(value)
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
            if self._setter is not None:
                value = self._setter(holder, self, value)
        except exc.QubesException:
            raise
        except (ValueError, TypeError) as err:
            raise exc.QubesPropertyValueError(
                holder, self, value, f"property {self.__name__!r} of {holder}: {err}"
            ) from None
        return value

    def __set__(self, holder: Any, value: Any) -> None:
        name = self.__name__
        if self.write_once and name in holder._property_values:
            raise exc.QubesPropertyValueError(
                holder, self, value, f"property {name!r} of {holder} is write-once and already set"
            )
        value = self.coerce(holder, value)
        oldvalue = self._current(holder)
        holder.fire_event(
            "property-pre-set:" + name, pre_event=True, name=name, newvalue=value,
            oldvalue=oldvalue,
        )
        holder._property_values[name] = value
        holder.fire_event("property-set:" + name, name=name, newvalue=value, oldvalue=oldvalue)

    def __delete__(self, holder: Any) -> None:
        name = self.__name__
        if self.write_once and name in holder._property_values:
            raise exc.QubesPropertyValueError(
                holder, self, None, f"property {name!r} of {holder} is write-once; cannot reset"
            )
        oldvalue = self._current(holder)
        holder.fire_event("property-pre-reset:" + name, pre_event=True, name=name,
                          oldvalue=oldvalue)
        holder._property_values.pop(name, None)
        holder.fire_event("property-reset:" + name, name=name, oldvalue=oldvalue)

    def _current(self, holder: Any) -> Any:
        try:
            return self.__get__(holder)
        except AttributeError:
            return None

    # --- text form (qubes.xml and the Admin API) -----------------------------

    def serialize(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value)
        return str(value)

    def load(self, holder: Any, text: str | None) -> None:
        """Store a value read from qubes.xml, without firing events."""
        value = self.coerce(holder, text or "")
        holder._property_values[self.__name__] = value


class StatelessProperty(Property):
    """A value computed on each read, never stored nor set: Qubes lists it among the
    properties (``default=True``) so that clients read it like any other (``xid``,
    ``visible_ip``, ``klass``, ...).
    """

    def __init__(self, name: str, compute: Callable[[Any], Any], *,
                 type: Callable[[Any], Any] | None = None,  # noqa: A002
                 reads_runtime: bool = False, doc: str = ""):
        super().__init__(name, type=type, default=compute, setter=_read_only_setter,
                         clone=False, persisted=False, doc=doc)
        #: Computing it asks the runtime (libvirt may answer over a connection): the
        #: Admin API reads it in a worker thread.
        self.reads_runtime = reads_runtime

    def coerce(self, holder: Any, value: Any) -> Any:
        return _read_only_setter(holder, self, value)

    def __delete__(self, holder: Any) -> None:
        _read_only_setter(holder, self, None)

    def serialize(self, value: Any) -> str:
        if isinstance(value, (tuple, list)):
            return " ".join(str(item) for item in value)
        return super().serialize(value)


def _read_only_setter(holder: Any, prop: Property, value: Any) -> Any:
    raise exc.QubesPropertyValueError(
        holder, prop, value, f"property {prop.__name__!r} of {holder} is read-only")


def read_only(holder: Any, prop: Property, value: Any) -> Any:
    """Setter of a stored property that is only ever computed (``updateable``, ...)."""
    return _read_only_setter(holder, prop, value)


class VMProperty(Property):
    """A reference to another VM, stored by name; ``""`` or None means no VM."""

    api_type = "vm"

    def __init__(self, name: str, *, vmclass: Any = None, allow_none: bool = False,
                 **kwargs: Any):
        kwargs.setdefault("load_stage", 4)
        super().__init__(name, **kwargs)
        self.vmclass = vmclass
        self.allow_none = allow_none

    def coerce(self, holder: Any, value: Any) -> Any:
        if value is None or value == "":
            if not self.allow_none:
                raise exc.QubesPropertyValueError(
                    holder, self, value, f"property {self.__name__!r} of {holder} cannot be None"
                )
            return super().coerce(holder, None) if self._setter else None
        app = holder.owning_app()
        if isinstance(value, str):
            try:
                value = app.domains[value]
            except KeyError:
                raise exc.QubesPropertyValueError(
                    holder, self, value,
                    f"property {self.__name__!r} of {holder}: no such VM {value!r}",
                ) from None
        vmclass = self.vmclass() if callable(self.vmclass) and not isinstance(
            self.vmclass, type) else self.vmclass
        if vmclass is not None and not isinstance(value, vmclass):
            names = vmclass if isinstance(vmclass, tuple) else (vmclass,)
            raise exc.QubesPropertyValueError(
                holder, self, value,
                f"property {self.__name__!r} of {holder}: {value.name!r} is a "
                f"{type(value).__name__}, expected "
                + " or ".join(c.__name__ for c in names),
            )
        if self._setter is not None:
            value = self._setter(holder, self, value)
        return value

    def serialize(self, value: Any) -> str:
        return "" if value is None else value.name

    def load(self, holder: Any, text: str | None) -> None:
        """Store a VM name read from qubes.xml; an empty one is no VM where that is
        allowed (stored as it is: the setter's checks are for what a user sets)."""
        if not text and self.allow_none:
            holder._property_values[self.__name__] = None
        else:
            super().load(holder, text)


class LabelProperty(Property):
    """A label, given by name, index or object."""

    api_type = "label"

    def coerce(self, holder: Any, value: Any) -> Any:
        app = holder.owning_app()
        try:
            return app.get_label(value)
        except exc.QubesLabelNotFoundError:
            raise exc.QubesPropertyValueError(
                holder, self, value, f"property {self.__name__!r} of {holder}: no such label "
                f"{value!r}",
            ) from None

    def serialize(self, value: Any) -> str:
        return "" if value is None else value.name


class PropertyHolder(Emitter):
    """An object whose state is its properties (the app, a VM)."""

    #: Every property of the class, sorted by name (filled by :meth:`property_list`).
    _property_list_cache: list[Property]
    #: Properties read from qubes.xml that no class declares, written back as they were.
    unknown_properties: dict[str, str]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._property_values: dict[str, Any] = {}
        for key, value in kwargs.items():
            setattr(self, key, value)

    @classmethod
    def property_list(cls) -> list[Property]:
        """Every property of this class, sorted by name."""
        cache = cls.__dict__.get("_property_list_cache")
        if cache is None:
            seen: dict[str, Property] = {}
            for klass in reversed(cls.__mro__):
                for attr in vars(klass).values():
                    if isinstance(attr, Property):
                        seen[attr.__name__] = attr
            cache = sorted(seen.values(), key=lambda p: p.__name__)
            cls._property_list_cache = cache
        return cache

    @classmethod
    def has_property(cls, name: str) -> bool:
        """Whether the class declares the property ``name`` (a capability: a VM class
        with ``netvm`` can be networked, one with ``template`` runs on a template)."""
        return isinstance(getattr(cls, name, None), Property)

    @classmethod
    def property_get_def(cls, name: str) -> Property:
        prop = getattr(cls, name, None) if isinstance(name, str) else None
        if not isinstance(prop, Property):
            raise exc.QubesNoSuchPropertyError(cls.__name__, name)
        return prop

    def property_is_default(self, name: str) -> bool:
        self.property_get_def(name)
        return name not in self._property_values

    def owning_app(self) -> Any:
        """The app whose VMs and labels the holder's properties name: the app itself
        here, a VM's app on a VM."""
        return self

    def property_is_set(self, name: str) -> bool:
        """Whether ``name`` holds a value of its own (not its default); no error for a
        property this holder does not have."""
        return name in self._property_values

    def property_own_value(self, name: str) -> Any:
        """The value set on ``name`` (None when it follows its default), without computing
        the default: what qubes.xml and references see."""
        return self._property_values.get(name)

    def property_get_default(self, name: str) -> Any:
        return self.property_get_def(name).get_default(self)

    def property_reset(self, name: str) -> None:
        delattr(self, self.property_get_def(name).__name__)

    def property_get_text(self, name: str) -> str:
        """The value as text (``""`` for None), as qubes.xml and the API show it."""
        prop = self.property_get_def(name)
        try:
            return prop.serialize(getattr(self, name))
        except AttributeError:
            return ""

    def clone_properties(self, src: PropertyHolder, proplist: Iterable[str] | None = None
                         ) -> None:
        """Copy the explicitly set, clonable properties of ``src``."""
        names = proplist if proplist is not None else [
            p.__name__ for p in src.property_list() if p.clone
        ]
        for name in names:
            prop = self.property_get_def(name)
            if name not in src._property_values:
                continue
            if prop.write_once and name in self._property_values:
                continue
            setattr(self, name, src._property_values[name])
