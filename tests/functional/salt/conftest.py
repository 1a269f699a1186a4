"""Salt fixtures: a real qubesd on a temporary installation, and Salt's loaders over it.

The installation holds dom0 and one template (``debian-12``, the default
template); qubesd runs with libvirt's test driver, so VMs really start, pause
and stop in libvirt (nothing executes inside: Xen is not available here). The
minion options come from :func:`qubes_core.mgmt.layout.minion_config`, the
same function ``qubesctl`` uses, with this checkout's ``_modules``/``_states``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_core.app import Qubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.mgmt import connection, layout


def build_base(base: Path) -> None:
    """dom0 and the template debian-12 (the default template), nothing else."""
    base.mkdir(parents=True, exist_ok=True)
    app = Qubes.create_empty_store(base / "qubes.xml", setup_check="auto")
    try:
        template = app.add_new_vm("TemplateVM", name="debian-12", label="black")
        app.default_template = template
        asyncio.run(template.storage.create())
        app.save()
    finally:
        app.close()


class Installation:
    """A base directory served by a qubesd process (libvirt test driver)."""

    def __init__(self, base: Path):
        self.base = base
        self.daemon: EmbeddedQubesd | None = None

    def start(self) -> None:
        self.daemon = EmbeddedQubesd.start(self.base, runtime="test")
        assert self.daemon is not None

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def client(self):
        from qubes_core.client.app import Qubes as ClientQubes

        return ClientQubes(self.base)

    def minion_opts(self, root: Path, **extra):
        import salt.config

        layout.lay_out(self.base)
        options = layout.minion_config(self.base, root_dir=root, **extra)
        config = layout.write_minion_config(root / "minion", options)
        return salt.config.minion_config(str(config))


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    base = tmp_path_factory.mktemp("qubes") / "base"
    build_base(base)
    inst = Installation(base)
    inst.start()
    yield inst
    for key in list(connection._clients):
        if key == str(base):
            connection._clients.pop(key).close()
    inst.stop()


@pytest.fixture(scope="module")
def loaders(installation: Installation, tmp_path_factory: pytest.TempPathFactory):
    from saltfactories.utils.functional import Loaders

    root = tmp_path_factory.mktemp("minion")
    return Loaders(installation.minion_opts(root))


@pytest.fixture
def qvm(loaders):
    """The execution module ``qvm`` as a minion loads it."""
    return loaders.modules.qvm


@pytest.fixture
def client(installation: Installation):
    return installation.client()


@pytest.fixture
def test_mode(loaders):
    """Run the loaded modules with ``test=True`` for the duration of a test."""
    loaded = [loaders.modules, loaders.states]
    for loader in loaded:
        loader.opts["test"] = True
    try:
        yield
    finally:
        for loader in loaded:
            loader.opts["test"] = False


def in_env(base: Path) -> dict[str, str]:
    return {**os.environ, "QUBES_BASE_DIR": str(base)}
