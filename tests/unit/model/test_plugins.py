"""Third-party VM classes and extensions are found through entry points."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from qubes_core import ext, plugins, vm

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
def installed_plugin(install_plugin):
    """A package with entry points, installed on sys.path like pip would."""
    install_plugin("audit_plugin", PLUGIN, """\
        [qubes_core.ext]
        audit = audit_plugin:AuditExtension

        [qubes_core.vm]
        Appliance = audit_plugin:Appliance
        """)


def test_own_plugins_are_declared_as_entry_points_from_the_one_table():
    assert {"AdminVM", "AppVM", "TemplateVM", "StandaloneVM", "DispVM"} \
        <= set(plugins.BUILTIN[plugins.VM_GROUP])
    for group, builtin in plugins.BUILTIN.items():
        declared = {e.name: e.value for e in importlib.metadata.entry_points(group=group)}
        assert {name: declared.get(name) for name in builtin} == builtin, group


def test_every_builtin_plugin_loads():
    assert set(vm.vm_classes()) >= set(plugins.BUILTIN[plugins.VM_GROUP])
    for group, builtin in plugins.BUILTIN.items():
        assert set(plugins.load_plugins(group)) >= set(builtin), group


def test_a_plugin_cannot_replace_a_builtin_one(tmp_path, monkeypatch):
    (tmp_path / "impostor.py").write_text("class AppVM:\n    pass\n")
    dist = tmp_path / "impostor-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: impostor\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[qubes_core.vm]\nAppVM = impostor:AppVM\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert plugins.plugin_specs(plugins.VM_GROUP)["AppVM"] == "qubes_core.vm.appvm:AppVM"


def test_third_party_class_and_extension_are_loaded(installed_plugin, app):
    ext.load_extensions()
    appliance = app.add_new_vm("Appliance", name="box", label="gray")
    appliance.tags.add("audited")
    plugin = sys.modules["audit_plugin"]
    assert sorted(plugin.SEEN) == [("box", "audiovm-dom0"), ("box", "audited"),
                                   ("box", "guivm-dom0")]  # with Qubes' automatic tags
    app.save()
    path = app.store.path
    app.close()
    from qubes_core.app import Qubes

    with Qubes(path) as again:
        assert type(again.domains["box"]).__name__ == "Appliance"
