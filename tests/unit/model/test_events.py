"""Event dispatch: lookup by name and pattern, order, vetoes, async handlers."""

import asyncio

import pytest

from qubes_core.events import Emitter, event_keys, handler


class Thing(Emitter):
    def __init__(self):
        super().__init__()
        self.seen = []

    @handler("ping")
    def on_ping(self, event, **kwargs):
        self.seen.append(("ping", kwargs))
        return "pong"

    @handler("feature-set:*")
    def on_any_feature(self, event, **kwargs):
        self.seen.append(("any", event))

    @handler("feature-set:service.*")
    def on_service(self, event, **kwargs):
        self.seen.append(("service", event))


class SubThing(Thing):
    @handler("ping")
    def on_ping_sub(self, event, **kwargs):
        self.seen.append(("sub", kwargs))


def test_event_keys_from_specific_to_general():
    assert event_keys("a:b.c.d") == ["a:b.c.d", "a:b.c.*", "a:b.*", "a:*", "*"]
    assert event_keys("plain") == ["plain", "*"]


def test_handler_receives_kwargs_and_results_are_collected():
    thing = Thing()
    assert thing.fire_event("ping", x=1) == ["pong"]
    assert thing.seen == [("ping", {"x": 1})]


def test_patterns_match_by_prefix_only():
    thing = Thing()
    thing.fire_event("feature-set:service.cups")
    thing.fire_event("feature-set:gui")
    assert ("service", "feature-set:service.cups") in thing.seen
    assert ("any", "feature-set:gui") in thing.seen
    assert ("service", "feature-set:gui") not in thing.seen


def test_base_class_handlers_run_before_subclass_and_pre_events_reverse():
    thing = SubThing()
    thing.fire_event("ping")
    assert [s[0] for s in thing.seen] == ["ping", "sub"]
    thing.seen.clear()
    thing.fire_event("ping", pre_event=True)
    assert [s[0] for s in thing.seen] == ["sub", "ping"]


def test_instance_and_class_handlers_added_at_runtime():
    thing, other = Thing(), Thing()
    calls = []
    thing.add_handler("custom", lambda subject, event, **kw: calls.append(subject))
    thing.fire_event("custom")
    other.fire_event("custom")
    assert calls == [thing]

    def class_level(subject, event, **kw):
        calls.append(("class", subject))

    Thing.add_class_handler("custom2", class_level)
    try:
        other.fire_event("custom2")
        assert calls[-1] == ("class", other)
    finally:
        Thing.remove_class_handler("custom2", class_level)


def test_pre_event_handler_vetoes_by_raising():
    thing = Thing()

    def veto(subject, event, **kwargs):
        raise ValueError("no")

    thing.add_handler("pre-thing", veto)
    with pytest.raises(ValueError):
        thing.fire_event("pre-thing", pre_event=True)


def test_coroutine_handlers_need_fire_event_async():
    thing = Thing()

    async def slow(subject, event, **kwargs):
        await asyncio.sleep(0)
        return "done"

    thing.add_handler("slow", slow)
    with pytest.raises(TypeError, match="fire_event_async"):
        thing.fire_event("slow")
    assert asyncio.run(thing.fire_event_async("slow")) == ["done"]


def test_disabled_events_call_nothing():
    thing = Thing()
    thing.events_enabled = False
    assert thing.fire_event("ping") == []
    assert thing.seen == []


def test_class_handlers_added_after_an_event_was_resolved_are_seen():
    thing = Thing()
    calls = []
    thing.fire_event("late")  # resolves (and remembers) the handlers of "late"

    def late(subject, event, **kwargs):
        calls.append(event)

    SubThing.add_class_handler("late", late)
    try:
        SubThing().fire_event("late")
        thing.fire_event("late")  # a Thing is not a SubThing
        assert calls == ["late"]
    finally:
        SubThing.remove_class_handler("late", late)
    SubThing().fire_event("late")
    assert calls == ["late"]
