"""Event dispatch.

Handlers are looked up by name: an event ``a:b.c`` reaches the handlers
registered for ``a:b.c``, ``a:b.*``, ``a:*`` and ``*``. Nothing is matched
against every handler.

Handlers are registered
- on a class, with the :func:`handler` decorator on its methods; subclasses
  inherit them;
- on a class from outside it (extensions), with :meth:`Emitter.add_class_handler`;
- on one instance, with :meth:`Emitter.add_handler`.

A handler is called as ``handler(subject, event, **kwargs)`` and may return a
value; the values that are not None are collected and returned to the caller
(for example, a list of errors). A pre-event handler vetoes by raising.
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable, Iterable
from typing import Any

Handler = Callable[..., Any]

# (class, event) -> its class-level handlers; cleared whenever a class handler is
# added or removed, so extensions loaded later are seen.
_resolved: dict[tuple[type, str], tuple[Handler, ...]] = {}


def handler(*events: str) -> Callable[[Handler], Handler]:
    """Mark a method as the handler of the named events (``name`` or ``name:*``)."""

    def decorator(func: Handler) -> Handler:
        func.__dict__.setdefault("_handled_events", set()).update(events)
        return func

    return decorator


def event_keys(event: str) -> list[str]:
    """The registry keys an event is looked up under, most specific first."""
    keys = [event]
    if ":" in event:
        head, _, tail = event.partition(":")
        # domain-feature-set:service.cups -> ...:service.*, then ...:*
        dots = [i for i, char in enumerate(tail) if char == "."]
        keys.extend(f"{head}:{tail[:i + 1]}*" for i in reversed(dots))
        keys.append(head + ":*")
    keys.append("*")
    return keys


class Emitter:
    """Something that fires events: the app, a VM, a pool."""

    _class_handlers: dict[str, list[Handler]] = {}
    events_enabled = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._class_handlers = collections.defaultdict(list)
        for attr in vars(cls).values():
            func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            for event in getattr(func, "_handled_events", ()):
                cls._class_handlers[event].append(func)

    def __init__(self) -> None:
        self._instance_handlers: dict[str, list[Handler]] = collections.defaultdict(list)

    @classmethod
    def add_class_handler(cls, event: str, func: Handler) -> None:
        """Register ``func(subject, event, **kwargs)`` for every instance of ``cls``."""
        cls._class_handlers[event].append(func)
        _resolved.clear()

    @classmethod
    def remove_class_handler(cls, event: str, func: Handler) -> None:
        cls._class_handlers[event].remove(func)
        _resolved.clear()

    def add_handler(self, event: str, func: Handler) -> None:
        """Register ``func(subject, event, **kwargs)`` for this object only."""
        self._instance_handlers[event].append(func)

    def remove_handler(self, event: str, func: Handler) -> None:
        self._instance_handlers[event].remove(func)

    @classmethod
    def _class_handlers_of(cls, event: str) -> tuple[Handler, ...]:
        """The class-level handlers of ``event``, base classes first (resolved once)."""
        found = _resolved.get((cls, event))
        if found is None:
            keys = event_keys(event)
            collected: list[Handler] = []
            for klass in reversed(cls.__mro__):
                registry = klass.__dict__.get("_class_handlers")
                if registry:
                    for key in keys:
                        collected.extend(registry.get(key, ()))
            found = _resolved[(cls, event)] = tuple(collected)
        return found

    def _handlers(self, event: str, pre_event: bool) -> list[Handler]:
        # Base classes first, so a subclass can build on what its base did.
        found = list(type(self)._class_handlers_of(event))
        instance = getattr(self, "_instance_handlers", None)
        if instance:
            for key in event_keys(event):
                found.extend(instance.get(key, ()))
        if pre_event:
            # Pre-events run most specific first: an override can veto early.
            found.reverse()
        return found

    def fire_event(self, event: str, pre_event: bool = False, **kwargs: Any) -> list[Any]:
        """Call the synchronous handlers of ``event``; return their non-None results."""
        if not self.events_enabled:
            return []
        results = []
        for func in self._handlers(event, pre_event):
            result = func(self, event, **kwargs)
            if inspect.iscoroutine(result):
                result.close()
                raise TypeError(
                    f"handler {func.__qualname__} of {event!r} is a coroutine; "
                    "fire the event with fire_event_async"
                )
            if result is not None:
                results.append(result)
        return results

    async def fire_event_async(
        self, event: str, pre_event: bool = False, **kwargs: Any
    ) -> list[Any]:
        """Call every handler of ``event``, awaiting the coroutines, in order."""
        if not self.events_enabled:
            return []
        results = []
        for func in self._handlers(event, pre_event):
            result = func(self, event, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                results.append(result)
        return results


def flatten(results: Iterable[Any]) -> list[Any]:
    """Join handler results that are themselves iterables (lists of items)."""
    out: list[Any] = []
    for item in results:
        if isinstance(item, (list, tuple, set)):
            out.extend(item)
        else:
            out.append(item)
    return out

