"""The classification of methods follows the reference, so generated policies grant
the same rights as Qubes' own (a read-only include never hands out a write)."""

import pytest

from qubes_core.api.registry import all_methods

# method: (scope, rights) as the reference declares them
REFERENCE = {
    "admin.vmclass.List": ("global", "ro"),
    "admin.vm.List": ("global", "ro"),
    "admin.Events": ("global", "ro"),
    "admin.property.Get": ("global", "ro"),
    "admin.property.Set": ("global", "rwx"),
    "admin.vm.property.Get": ("local", "ro"),
    "admin.vm.property.GetAll": ("local", "ro"),
    "admin.vm.property.Set": ("local", "rwx"),
    "admin.vm.property.Reset": ("local", "rwx"),
    "admin.vm.feature.Get": ("local", "ro"),
    "admin.vm.feature.Set": ("local", "rwx"),
    "admin.vm.tag.Set": ("local", "rwx"),
    "admin.vm.Start": ("local", "rwx"),
    "admin.vm.Kill": ("local", "rwx"),
    "admin.vm.CurrentState": ("local", "ro"),
    "admin.vm.Create.AppVM": ("global", "rwx"),
    "admin.vm.Remove": ("global", "rwx"),
    "admin.label.List": ("global", "ro"),
    "admin.label.Create": ("global", "rwx"),
    "admin.pool.List": ("global", "ro"),
    "admin.pool.Add": ("global", "rwx"),
    "admin.vm.volume.List": ("local", "ro"),
    "admin.vm.volume.Info": ("local", "ro"),
    "admin.vm.volume.CloneFrom": ("local", "rwx"),
    "admin.vm.volume.CloneTo": ("local", "rwx"),
    "admin.vm.volume.Revert": ("local", "rwx"),
    "admin.vm.firewall.Get": ("local", "ro"),
    "admin.vm.firewall.Set": ("local", "rwx"),
    "admin.vm.device.pci.Assign": ("local", "rwx"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_method_classified_like_the_reference(name):
    specs = {spec.name: spec for spec in all_methods()}
    assert name in specs, f"{name} is not served"
    scope, rights = REFERENCE[name]
    assert specs[name].policy_group == f"admin-{scope}-{rights}"
