"""Typed properties: coercion, defaults, write_once, events, errors."""

import pytest

from qubes_core import exc
from qubes_core.properties import Property, PropertyHolder, bool_type, int_type


class Holder(PropertyHolder):
    flag = Property("flag", type=bool, default=False, doc="A flag.")
    count = Property("count", type=int, default=lambda self: 7, doc="A count.")
    mode = Property("mode", type=str, choices=("a", "b"), default="a")
    ident = Property("ident", type=str, write_once=True)
    required = Property("required", type=str)


@pytest.mark.parametrize("text,expected", [
    ("True", True), ("false", False), ("1", True), ("0", False), ("yes", True),
    ("off", False), ("", False), (True, True), (0, False),
])
def test_bool_type_accepts_common_spellings(text, expected):
    assert bool_type(text) is expected


@pytest.mark.parametrize("bad", ["maybe", 2, 1.0, None])
def test_bool_type_refuses_others(bad):
    with pytest.raises(ValueError):
        bool_type(bad)


@pytest.mark.parametrize("bad", ["1.5", "x", True, 2.0, None])
def test_int_type_refuses_what_would_truncate(bad):
    with pytest.raises(ValueError):
        int_type(bad)


def test_defaults_constant_and_callable_and_is_default():
    holder = Holder()
    assert holder.flag is False and holder.count == 7
    assert holder.property_is_default("count")
    holder.count = "12"
    assert holder.count == 12
    assert not holder.property_is_default("count")
    holder.property_reset("count")
    assert holder.count == 7


def test_invalid_value_names_property_and_changes_nothing():
    holder = Holder()
    holder.mode = "b"
    with pytest.raises(exc.QubesPropertyValueError, match="mode"):
        holder.mode = "c"
    assert holder.mode == "b"
    with pytest.raises(exc.QubesPropertyValueError, match="count"):
        holder.count = "many"
    assert holder.count == 7


def test_no_default_raises_attribute_error():
    with pytest.raises(AttributeError, match="required"):
        Holder().required  # noqa: B018


def test_write_once():
    holder = Holder(ident="x")
    with pytest.raises(exc.QubesPropertyValueError, match="write-once"):
        holder.ident = "y"
    with pytest.raises(exc.QubesPropertyValueError, match="write-once"):
        del holder.ident
    assert holder.ident == "x"


def test_set_and_reset_fire_events_with_old_and_new_values():
    holder = Holder()
    seen = []
    for event in ("property-pre-set:count", "property-set:count",
                  "property-pre-reset:count", "property-reset:count"):
        holder.add_handler(event, lambda subject, event, **kw: seen.append((event, kw)))
    holder.count = 3
    del holder.count
    assert seen == [
        ("property-pre-set:count", {"name": "count", "newvalue": 3, "oldvalue": 7}),
        ("property-set:count", {"name": "count", "newvalue": 3, "oldvalue": 7}),
        ("property-pre-reset:count", {"name": "count", "oldvalue": 3}),
        ("property-reset:count", {"name": "count", "oldvalue": 3}),
    ]


def test_pre_set_veto_keeps_old_value():
    holder = Holder()

    def veto(subject, event, **kwargs):
        raise exc.QubesValueError("vetoed")

    holder.add_handler("property-pre-set:flag", veto)
    with pytest.raises(exc.QubesValueError):
        holder.flag = True
    assert holder.flag is False and holder.property_is_default("flag")


def test_unknown_property_lookup():
    with pytest.raises(exc.QubesNoSuchPropertyError):
        Holder().property_get_def("nope")
    assert [p.__name__ for p in Holder.property_list()] == [
        "count", "flag", "ident", "mode", "required"]


def test_clone_copies_only_set_properties():
    src, dst = Holder(), Holder()
    src.count = 99
    dst.clone_properties(src)
    assert dst.count == 99
    assert dst.property_is_default("flag")


def test_property_is_set_and_own_value_do_not_compute_defaults(basic_app):
    work = basic_app.domains["work"]
    assert not work.property_is_set("template") and work.property_own_value("template") is None
    assert work.template is basic_app.default_template  # the default, computed
    work.template = basic_app.domains["debian-12"]
    assert work.property_is_set("template")
    assert work.property_own_value("template") is basic_app.domains["debian-12"]
    assert not work.property_is_set("no_such_property")
