"""Third-party VM classes and extensions are found through entry points."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest

from qubes_core import ext, vm

PLUGIN = '''
from qubes_core.ext import Extension, vm_handler
from qubes_core.vm.standalonevm import StandaloneVM

SEEN = []


class AuditExtension(Extension):
    @vm_handler("domain-tag-add:*")
    def on_tag(self, vm, event, tag, **kwargs):
        SEEN.append((vm.name, tag))


class Appliance(StandaloneVM):
    """A VM class shipped by a third party."""
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A package with entry points, installed on sys.path like pip would."""
    (tmp_path / "audit_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "audit_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: audit-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [qubes_core.ext]
        audit = audit_plugin:AuditExtension

        [qubes_core.vm]
        Appliance = audit_plugin:Appliance
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    vm.vm_classes.cache_clear()
    yield sys.modules.get("audit_plugin")
    loaded = ext.load_extensions()
    if "audit" in loaded:
        loaded.pop("audit").unregister()
    vm.vm_classes.cache_clear()
    sys.modules.pop("audit_plugin", None)


def test_own_classes_and_extensions_are_declared_as_entry_points():
    names = {e.name for e in importlib.metadata.entry_points(group="qubes_core.vm")}
    assert {"AdminVM", "AppVM", "TemplateVM", "StandaloneVM", "DispVM"} <= names
    extensions = {e.name for e in importlib.metadata.entry_points(group="qubes_core.ext")}
    assert {"services", "core_features"} <= extensions


def test_third_party_class_and_extension_are_loaded(installed_plugin, app):
    ext.load_extensions()
    appliance = app.add_new_vm("Appliance", name="box", label="gray")
    appliance.tags.add("audited")
    plugin = sys.modules["audit_plugin"]
    assert plugin.SEEN == [("box", "audited")]
    app.save()
    path = app.store.path
    app.close()
    from qubes_core.app import Qubes

    with Qubes(path) as again:
        assert type(again.domains["box"]).__name__ == "Appliance"
