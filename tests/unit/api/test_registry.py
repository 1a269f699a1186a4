"""The method registry: declarations, flags, and the list policy generation reads."""

from __future__ import annotations

import pytest

from qubes_core.api import API_MODULES, registry
from qubes_core.api.registry import MethodSpec, all_methods, get_method, method

# Methods FACTS.md and the issue name, that this part of the API must serve.
REQUIRED = [
    "admin.vmclass.List", "admin.vm.List", "admin.Events",
    *[f"admin.vm.property.{m}" for m in ("List", "Get", "GetAll", "GetDefault", "Help",
                                         "Set", "Reset")],
    *[f"admin.property.{m}" for m in ("List", "Get", "GetAll", "GetDefault", "Help", "Set",
                                      "Reset")],
    *[f"admin.vm.feature.{m}" for m in ("List", "Get", "Set", "Remove", "CheckWithTemplate",
                                        "CheckWithNetvm")],
    *[f"admin.vm.tag.{m}" for m in ("List", "Get", "Set", "Remove")],
    "admin.vm.Create.AppVM", "admin.vm.Create.TemplateVM", "admin.vm.Create.StandaloneVM",
    "admin.vm.CreateInPool.AppVM", "admin.vm.CreateDisposable", "admin.vm.Remove",
    *[f"admin.vm.{m}" for m in ("Start", "Shutdown", "Kill", "Pause", "Unpause",
                                "CurrentState")],
    *[f"admin.label.{m}" for m in ("List", "Get", "Index", "Create", "Remove")],
    *[f"admin.vm.device.pci.{m}" for m in ("Available", "Assigned", "Assign", "Unassign")],
    *[f"admin.pool.{m}" for m in ("List", "ListDrivers", "Info", "Add", "Remove",
                                  "Set.revisions_to_keep")],
    *[f"admin.vm.volume.{m}" for m in ("List", "Info", "ListSnapshots", "Revert", "CloneFrom",
                                       "CloneTo", "Resize", "Import", "Set.revisions_to_keep",
                                       "Set.rw")],
    *[f"admin.vm.firewall.{m}" for m in ("Get", "Set", "Reload")],
    "qubes.FeaturesRequest", "qubes.NotifyTools", "qubes.NotifyUpdates", "qubes.GetDate",
]


def test_required_methods_are_declared():
    names = {spec.name for spec in all_methods()}
    missing = [name for name in REQUIRED if name not in names]
    assert not missing


def test_all_methods_sorted_and_unique():
    names = [spec.name for spec in all_methods()]
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_every_spec_is_consistent():
    for spec in all_methods():
        assert isinstance(spec, MethodSpec)
        assert spec.scope in registry.SCOPES
        assert spec.dest in registry.DESTS
        assert spec.socket in registry.SOCKETS
        assert spec.read or spec.write or spec.execute
        assert callable(spec.handler)
        if spec.vm_facing:
            assert spec.socket == "misc"
        elif spec.name.startswith("admin."):
            assert spec.socket == "admin"


def test_specs_are_frozen():
    spec = get_method("admin.vm.List")
    with pytest.raises(AttributeError):
        spec.write = True  # type: ignore[misc]


def test_classification_examples():
    get = get_method("admin.vm.property.Get")
    assert (get.scope, get.read, get.write, get.argument, get.payload, get.dest) == (
        "local", True, False, True, False, "vm")
    assert get.policy_group == "admin-local-ro"
    set_ = get_method("admin.property.Set")
    assert (set_.scope, set_.write, set_.payload, set_.dest) == ("global", True, True,
                                                                  "adminvm")
    assert set_.policy_group == "admin-global-rwx"
    assert get_method("admin.vm.Start").execute
    assert get_method("qubes.GetDate").vm_facing


def test_api_modules_are_importable_and_listed():
    assert "qubes_core.api.properties" in API_MODULES
    modules = {spec.handler.__module__ for spec in all_methods()}
    assert modules <= set(API_MODULES)


def test_declaration_is_checked():
    async def handler(call):
        return None

    with pytest.raises(ValueError, match="scope"):
        method("test.x.A", scope="everywhere", read=True)(handler)
    with pytest.raises(ValueError, match="dest"):
        method("test.x.B", scope="local", read=True, dest="nowhere")(handler)
    with pytest.raises(ValueError, match="at least one"):
        method("test.x.C", scope="local")(handler)
    with pytest.raises(ValueError, match="invalid method name"):
        method("bad name", scope="local", read=True)(handler)
    with pytest.raises(ValueError, match="own_write_lock only applies to a write"):
        method("test.x.D", scope="local", read=True, own_write_lock=True)(handler)


def test_only_long_copies_run_without_the_write_lock():
    """A volume copy and a backup: both take the lock only around their model change."""
    assert [spec.name for spec in all_methods() if spec.own_write_lock] == [
        "admin.backup.Execute", "admin.vm.volume.CloneTo"]


def test_second_different_declaration_is_refused():
    async def first(call):
        return None

    async def second(call):
        return None

    try:
        method("test.registry.Twice", scope="local", read=True)(first)
        method("test.registry.Twice", scope="local", read=True)(first)  # same: accepted
        with pytest.raises(ValueError, match="declared twice"):
            method("test.registry.Twice", scope="local", write=True)(second)
    finally:
        registry._registry.pop("test.registry.Twice", None)
