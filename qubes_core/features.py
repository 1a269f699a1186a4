"""Features (string key/value settings of a VM) and tags (set of names)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from qubes_core import exc

if TYPE_CHECKING:
    from qubes_core.vm.base import BaseVM

FEATURE_NAME_RE = re.compile(r"^[a-zA-Z0-9_.:+-]{1,255}$")
TAG_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,255}$")

_NO_DEFAULT = object()


#: What a check returns when the feature is nowhere (its ``default``).
D = TypeVar("D")

def feature_value(value: Any) -> str:
    """Features are strings: True is ``"1"`` and False is ``""``."""
    if value is True:
        return "1"
    if value is False:
        return ""
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise exc.QubesValueError(f"feature value must be a string, got {value!r}")
    return value


def validate_feature_name(name: str) -> str:
    """Refuse a feature name from a user or API call unless it is 1-255 of ``[A-Za-z0-9_.:+-]``."""
    if not isinstance(name, str) or not FEATURE_NAME_RE.match(name):
        raise exc.QubesValueError(
            f"invalid feature name {name!r}: use letters, digits and _ . : + -"
        )
    return name


class Features(MutableMapping[str, str]):
    """The features of one VM; every change fires an event on the VM."""

    def __init__(self, vm: BaseVM):
        self.vm = vm
        self._values: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        try:
            return self._values[key]
        except KeyError:
            raise exc.QubesFeatureNotFoundError(self.vm, key) from None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """``self[key]`` or ``default``, without raising (read many times per GetAll)."""
        return self._values.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        validate_feature_name(key)
        value = feature_value(value)
        oldvalue = self._values.get(key)
        self.vm.fire_event("domain-feature-pre-set:" + key, pre_event=True, feature=key,
                           value=value, oldvalue=oldvalue)
        self._values[key] = value
        self.vm.fire_event("domain-feature-set:" + key, feature=key, value=value,
                           oldvalue=oldvalue)

    def __delitem__(self, key: str) -> None:
        if key not in self._values:
            raise exc.QubesFeatureNotFoundError(self.vm, key)
        self.vm.fire_event("domain-feature-pre-delete:" + key, pre_event=True, feature=key)
        del self._values[key]
        self.vm.fire_event("domain-feature-delete:" + key, feature=key)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def load(self, key: str, value: str) -> None:
        """Set a value read from qubes.xml, without events."""
        self._values[key] = value

    @overload
    def check_with_template(self, key: str) -> str: ...

    @overload
    def check_with_template(self, key: str, default: D) -> str | D: ...

    def check_with_template(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """The value on this VM, else on its template, and so on up the chain."""
        return self._check_chain(key, default, lambda vm: vm.template)

    @overload
    def check_with_netvm(self, key: str) -> str: ...

    @overload
    def check_with_netvm(self, key: str, default: D) -> str | D: ...

    def check_with_netvm(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """The value on this VM, else on its netvm, and so on up the chain."""
        return self._check_chain(key, default, lambda vm: vm.netvm)

    @overload
    def check_with_adminvm(self, key: str) -> str: ...

    @overload
    def check_with_adminvm(self, key: str, default: D) -> str | D: ...

    def check_with_adminvm(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        if key in self._values:
            return self._values[key]
        adminvm = self.vm.app.domains.get(0)
        if adminvm is not None and adminvm is not self.vm and key in adminvm.features:
            return adminvm.features[key]
        if default is _NO_DEFAULT:
            raise exc.QubesFeatureNotFoundError(self.vm, key)
        return default

    def _check_chain(self, key: str, default: Any,
                     link: Callable[[BaseVM], BaseVM | None]) -> Any:
        vm: BaseVM | None = self.vm
        seen = set()
        while vm is not None and id(vm) not in seen:
            seen.add(id(vm))
            if key in vm.features._values:
                return vm.features._values[key]
            vm = link(vm)
        if default is _NO_DEFAULT:
            raise exc.QubesFeatureNotFoundError(self.vm, key)
        return default


class Tags:
    """The tags of one VM; adding and removing fire events on the VM."""

    def __init__(self, vm: BaseVM):
        self.vm = vm
        self._tags: set[str] = set()

    def add(self, tag: str) -> None:
        if not isinstance(tag, str) or not TAG_NAME_RE.match(tag):
            raise exc.QubesValueError(f"invalid tag {tag!r}: use letters, digits, '_' and '-'")
        if tag in self._tags:
            return
        self.vm.fire_event("domain-tag-pre-add:" + tag, pre_event=True, tag=tag)
        self._tags.add(tag)
        self.vm.fire_event("domain-tag-add:" + tag, tag=tag)

    def remove(self, tag: str) -> None:
        if tag not in self._tags:
            raise exc.QubesTagNotFoundError(self.vm, tag)
        self.vm.fire_event("domain-tag-pre-delete:" + tag, pre_event=True, tag=tag)
        self._tags.discard(tag)
        self.vm.fire_event("domain-tag-delete:" + tag, tag=tag)

    def discard(self, tag: str) -> None:
        if tag in self._tags:
            self.remove(tag)

    def update(self, tags: Any) -> None:
        for tag in tags:
            self.add(tag)

    def load(self, tag: str) -> None:
        self._tags.add(tag)

    def __contains__(self, tag: object) -> bool:
        return tag in self._tags

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._tags))

    def __len__(self) -> int:
        return len(self._tags)
