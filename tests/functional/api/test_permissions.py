"""admin-permission events: dom0 may do anything; a VM only what a handler grants."""

from __future__ import annotations

import pytest

from qubes_core import exc
from qubes_core.vm.base import BaseVM


@pytest.fixture
def handlers():
    """Register class handlers for the test and remove them after."""
    added = []

    def add(event, func):
        BaseVM.add_class_handler(event, func)
        added.append((event, func))

    yield add
    for event, func in added:
        BaseVM.remove_class_handler(event, func)


async def test_vm_source_refused_without_grant(api):
    before = api.app.store.path.read_bytes()
    assert await api.raw("admin.vm.List", src="work") is None
    assert await api.raw("admin.vm.feature.Set", "work", "x", b"1", src="work") is None
    assert "x" not in api.app.domains["work"].features
    assert api.app.store.path.read_bytes() == before


async def test_unknown_source_gets_no_reply(api):
    assert await api.raw("admin.vm.List", src="ghost") is None


async def test_grant_and_its_arguments(api, handlers):
    seen = []

    def grant(vm, event, **kwargs):
        seen.append((vm.name, event, kwargs["dest"].name, kwargs["arg"], kwargs["method"],
                     kwargs["payload"]))
        return True

    handlers("admin-permission:admin.vm.feature.Set", grant)
    assert await api.call("admin.vm.feature.Set", "sys-net", "x", "v", src="work") == ""
    assert api.app.domains["sys-net"].features["x"] == "v"
    assert seen == [("work", "admin-permission:admin.vm.feature.Set", "sys-net", "x",
                     "admin.vm.feature.Set", b"v")]
    # Granting one method grants nothing else.
    assert await api.raw("admin.vm.feature.Remove", "sys-net", "x", src="work") is None


async def test_refusal_applies_to_dom0_too(api, handlers):
    def refuse(vm, event, **kwargs):
        if kwargs["arg"] == "secret":
            raise exc.PermissionDenied("no")

    handlers("admin-permission:admin.vm.feature.Get", refuse)
    api.app.domains["work"].features["secret"] = "1"
    api.app.domains["work"].features["public"] = "1"
    assert await api.raw("admin.vm.feature.Get", "work", "secret") is None
    assert await api.call("admin.vm.feature.Get", "work", "public") == "1"


async def test_filters_restrict_listings(api, handlers):
    handlers("admin-permission:admin.vm.List",
             lambda vm, event, **kw: [True, lambda target: target.name.startswith("sys-")])
    body = await api.call("admin.vm.List", src="work")
    assert [line.split()[0] for line in body.splitlines()] == ["sys-firewall", "sys-net"]


async def test_vm_facing_methods_need_no_grant_but_can_be_refused(api, handlers):
    assert (await api.call("qubes.GetDate", src="work", kind="misc")).endswith("+00:00\n")
    handlers("admin-permission:qubes.GetDate",
             lambda vm, event, **kw: (_ for _ in ()).throw(exc.PermissionDenied()))
    assert await api.raw("qubes.GetDate", src="work", kind="misc") is None


async def test_vm_facing_methods_only_to_dom0(api):
    with pytest.raises(exc.ProtocolError, match="must be dom0"):
        await api.call("qubes.GetDate", "sys-net", src="work", kind="misc")
