"""Fixtures and helpers of the runtime tests (imported by both tiers' conftest)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from tests.requirements import require

TEST_DRIVER_DOMAIN = "test"  # predefined by libvirt's test driver; not ours


def require_libvirt() -> None:
    require(importlib.util.find_spec("libvirt") is not None,
            "needs libvirt-python (built against libvirt-dev with pkg-config)")


def clear_test_driver(conn: Any) -> None:
    """Remove every domain but the driver's own: all test:///default users share them."""
    import libvirt

    for domain in conn.listAllDomains():
        if domain.name() == TEST_DRIVER_DOMAIN:
            if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                domain.resume()
            continue
        if domain.isActive():
            domain.destroy()
        if domain.isPersistent():
            domain.undefine()


@pytest.fixture
def runtime() -> Iterator[Any]:
    """A libvirt runtime on test:///default, with no domain of ours left before or after."""
    require_libvirt()
    from qubes_core.backend import make_runtime

    instance = make_runtime("test")
    clear_test_driver(instance.connection())
    yield instance
    clear_test_driver(instance.connection())
    instance.close()


@pytest.fixture
async def lifecycle_app(basic_app: Any, runtime: Any) -> Any:
    """``basic_app`` on the test driver, every VM's volumes created in its file-reflink pool."""
    basic_app.runtime = runtime
    for vm in basic_app.domains:
        if vm.qid != 0:
            await vm.storage.create()
    return basic_app


class EventLog:
    """Records the named events of the given VMs, in the order they are fired."""

    def __init__(self, vms: Any, *events: str):
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        for vm in vms:
            for event in events:
                vm.add_handler(event, self._record)

    def _record(self, vm: Any, event: str, **kwargs: Any) -> None:
        self.records.append((vm.name, event, kwargs))

    def of(self, name: str) -> list[str]:
        return [event for vm, event, _ in self.records if vm == name]

    def names(self, event: str) -> list[str]:
        return [vm for vm, recorded, _ in self.records if recorded == event]


def squat(app: Any, name: str) -> Any:
    """A running libvirt domain named ``name`` that is none of the model's: libvirt then
    refuses to start a VM of that name (a failed start)."""
    squatter = app.runtime.connection().defineXML(
        f"<domain type='test'><name>{name}</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>")
    squatter.create()
    return squatter
