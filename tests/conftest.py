"""Fixtures shared by every tier."""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qubes_core import ext, vm
from qubes_core.app import Qubes


def pytest_configure(config: pytest.Config) -> None:
    """Drop the deferred stderr handler that importing Salt leaves on the root logger.

    It would replay every record at exit onto a stream pytest has closed; pytest
    captures log records itself.
    """
    for log_handler in list(logging.root.handlers):
        if type(log_handler).__name__ == "DeferredStreamHandler":
            logging.root.removeHandler(log_handler)


@pytest.fixture
def app(tmp_path: Path):
    """A new, empty installation (dom0, labels, one pool) in a temporary directory
    (its pool reflinks if the filesystem can, else makes sparse copies)."""
    instance = Qubes.create_empty_store(tmp_path / "qubes.xml", setup_check="auto")
    yield instance
    instance.close()


def add_basic_vms(app: Qubes) -> Qubes:
    """A template, sys-net, sys-firewall (the default netvm) and an AppVM ``work``."""
    template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
    app.default_template = template
    net = app.add_new_vm("AppVM", name="sys-net", label="red", provides_network=True,
                         netvm=None)
    firewall = app.add_new_vm("AppVM", name="sys-firewall", label="green",
                              provides_network=True, netvm=net)
    app.default_netvm = firewall
    app.add_new_vm("AppVM", name="work", label="blue")
    return app


@pytest.fixture
def basic_app(app: Qubes) -> Qubes:
    """dom0, a template, sys-net, sys-firewall and an AppVM ``work``."""
    return add_basic_vms(app)


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[Callable[[str, str, str], None]]:
    """Install a third party's plugin as pip would: ``install(module, source,
    entry_points)`` writes the module and a dist-info with that entry_points.txt on
    sys.path. At teardown its extensions are unregistered and it is forgotten."""
    modules: list[str] = []

    def install(module: str, source: str, entry_points: str) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{module}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
        modules.append(module)
        importlib.invalidate_caches()
        vm.vm_classes.cache_clear()

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    loaded = ext.load_extensions()
    for name, extension in list(loaded.items()):
        if type(extension).__module__ in modules:
            loaded.pop(name).unregister()
    vm.vm_classes.cache_clear()
    for module in modules:
        sys.modules.pop(module, None)
