"""The classification of methods follows the reference, so generated policies grant
the same rights as Qubes' own (a read-only include never hands out a write).

``REFERENCE`` is every Admin API method of Qubes R4.4 with the scope and rights it
declares (``*`` stands for a VM class or a device class); every ``admin.*`` method
served here must be in it and classified the same.
"""

import re

import pytest

from qubes_core.api.registry import all_methods

# method: (scope, rights) as Qubes R4.4 declares them (``admin.vm.volume.Import`` and
# ``ImportWithSize`` are served by qrexec scripts there; their policy files send them
# to admin-local-rwx).
REFERENCE = {
    "admin.Events": ("global", "ro"),
    "admin.backup.Cancel": ("global", "rwx"),
    "admin.backup.Execute": ("global", "rwx"),
    "admin.backup.Info": ("local", "ro"),
    "admin.deviceclass.List": ("global", "ro"),
    "admin.label.Create": ("global", "rwx"),
    "admin.label.Get": ("global", "ro"),
    "admin.label.Index": ("global", "ro"),
    "admin.label.List": ("global", "ro"),
    "admin.label.Remove": ("global", "rwx"),
    "admin.pool.Add": ("global", "rwx"),
    "admin.pool.Info": ("global", "ro"),
    "admin.pool.List": ("global", "ro"),
    "admin.pool.ListDrivers": ("global", "ro"),
    "admin.pool.Remove": ("global", "rwx"),
    "admin.pool.Set.ephemeral_volatile": ("global", "rwx"),
    "admin.pool.Set.revisions_to_keep": ("global", "rwx"),
    "admin.pool.UsageDetails": ("global", "ro"),
    "admin.pool.volume.List": ("global", "ro"),
    "admin.property.Get": ("global", "ro"),
    "admin.property.GetAll": ("global", "ro"),
    "admin.property.GetDefault": ("global", "ro"),
    "admin.property.Help": ("global", "ro"),
    "admin.property.List": ("global", "ro"),
    "admin.property.Reset": ("global", "rwx"),
    "admin.property.Set": ("global", "rwx"),
    "admin.vm.Console": ("local", "rwx"),
    "admin.vm.Create.*": ("global", "rwx"),
    "admin.vm.CreateDisposable": ("global", "rwx"),
    "admin.vm.CreateInPool.*": ("global", "rwx"),
    "admin.vm.CurrentState": ("local", "ro"),
    "admin.vm.Kill": ("local", "rwx"),
    "admin.vm.List": ("global", "ro"),
    "admin.vm.Pause": ("local", "rwx"),
    "admin.vm.Remove": ("global", "rwx"),
    "admin.vm.Resume": ("local", "rwx"),
    "admin.vm.Shutdown": ("local", "rwx"),
    "admin.vm.Start": ("local", "rwx"),
    "admin.vm.Stats": ("global", "ro"),
    "admin.vm.Suspend": ("local", "rwx"),
    "admin.vm.Unpause": ("local", "rwx"),
    "admin.vm.device.*.Assign": ("local", "rwx"),
    "admin.vm.device.*.Assigned": ("local", "ro"),
    "admin.vm.device.*.Attach": ("local", "rwx"),
    "admin.vm.device.*.Attached": ("local", "ro"),
    "admin.vm.device.*.Available": ("local", "ro"),
    "admin.vm.device.*.Detach": ("local", "rwx"),
    "admin.vm.device.*.Set.assignment": ("local", "rwx"),
    "admin.vm.device.*.Unassign": ("local", "rwx"),
    "admin.vm.device.denied.Add": ("local", "rwx"),
    "admin.vm.device.denied.List": ("local", "ro"),
    "admin.vm.device.denied.Remove": ("local", "rwx"),
    "admin.vm.feature.CheckWithAdminVM": ("local", "ro"),
    "admin.vm.feature.CheckWithNetvm": ("local", "ro"),
    "admin.vm.feature.CheckWithTemplate": ("local", "ro"),
    "admin.vm.feature.CheckWithTemplateAndAdminVM": ("local", "ro"),
    "admin.vm.feature.Get": ("local", "ro"),
    "admin.vm.feature.List": ("local", "ro"),
    "admin.vm.feature.Remove": ("local", "rwx"),
    "admin.vm.feature.Set": ("local", "rwx"),
    "admin.vm.firewall.Get": ("local", "ro"),
    "admin.vm.firewall.Reload": ("local", "rwx"),
    "admin.vm.firewall.Set": ("local", "rwx"),
    "admin.vm.notes.Get": ("local", "ro"),
    "admin.vm.notes.Set": ("local", "rwx"),
    "admin.vm.property.Get": ("local", "ro"),
    "admin.vm.property.GetAll": ("local", "ro"),
    "admin.vm.property.GetDefault": ("local", "ro"),
    "admin.vm.property.Help": ("local", "ro"),
    "admin.vm.property.List": ("local", "ro"),
    "admin.vm.property.Reset": ("local", "rwx"),
    "admin.vm.property.Set": ("local", "rwx"),
    "admin.vm.tag.Get": ("local", "ro"),
    "admin.vm.tag.List": ("local", "ro"),
    "admin.vm.tag.Remove": ("local", "rwx"),
    "admin.vm.tag.Set": ("local", "rwx"),
    "admin.vm.volume.Clear": ("local", "rwx"),
    "admin.vm.volume.CloneFrom": ("local", "rwx"),
    "admin.vm.volume.CloneTo": ("local", "rwx"),
    "admin.vm.volume.Import": ("local", "rwx"),
    "admin.vm.volume.ImportWithSize": ("local", "rwx"),
    "admin.vm.volume.Info": ("local", "ro"),
    "admin.vm.volume.List": ("local", "ro"),
    "admin.vm.volume.ListSnapshots": ("local", "ro"),
    "admin.vm.volume.Resize": ("local", "rwx"),
    "admin.vm.volume.Revert": ("local", "rwx"),
    "admin.vm.volume.Set.ephemeral": ("local", "rwx"),
    "admin.vm.volume.Set.revisions_to_keep": ("local", "rwx"),
    "admin.vm.volume.Set.rw": ("local", "rwx"),
    "admin.vmclass.List": ("global", "ro"),
}


def reference_of(name: str) -> tuple[str, str] | None:
    """The reference classification of ``name``; None when Qubes has no such method."""
    if name in REFERENCE:
        return REFERENCE[name]
    for pattern, classification in REFERENCE.items():
        if "*" in pattern and re.fullmatch(re.escape(pattern).replace(r"\*", "[^.]+"), name):
            return classification
    return None


ADMIN_METHODS = sorted(spec.name for spec in all_methods() if spec.name.startswith("admin."))


def test_reference_patterns_match_one_class_name() -> None:
    assert reference_of("admin.vm.Create.AppVM") == ("global", "rwx")
    assert reference_of("admin.vm.device.pci.Assign") == ("local", "rwx")
    assert reference_of("admin.vm.device.pci.x.Assign") is None
    assert reference_of("admin.vm.NoSuchMethod") is None


@pytest.mark.parametrize("name", ADMIN_METHODS)
def test_method_classified_like_the_reference(name: str) -> None:
    classification = reference_of(name)
    assert classification is not None, f"{name} is not an Admin API method of Qubes"
    scope, rights = classification
    spec = next(spec for spec in all_methods() if spec.name == name)
    assert spec.policy_group == f"admin-{scope}-{rights}"
