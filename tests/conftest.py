"""Fixtures shared by every tier."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

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
