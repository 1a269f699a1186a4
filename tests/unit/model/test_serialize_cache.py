"""Saving reuses each unchanged VM's part of qubes.xml; the reuse must never show.

After every kind of change, in random order, the bytes written must equal a full
rebuild that ignores the reuse.
"""

from __future__ import annotations

import random

from qubes_core.app import Qubes
from qubes_core.devices import DeviceAssignment
from qubes_core.store import serialize


def _mutations(app: Qubes, rng: random.Random):
    def vm():
        return rng.choice([v for v in app.domains if v.qid != 0])

    def set_memory():
        vm().memory = rng.randint(100, 5000)

    def reset_memory():
        target = vm()
        if not target.property_is_default("memory"):
            del target.memory

    def set_label():
        vm().label = rng.choice(["red", "green", "blue", "black"])

    def feature():
        vm().features[f"f{rng.randint(0, 5)}"] = rng.choice(["1", "", "a&b<c>"])

    def drop_feature():
        target = vm()
        if target.features:
            del target.features[rng.choice(list(target.features))]

    def tag():
        target = vm()
        name = f"t{rng.randint(0, 5)}"
        if name in target.tags:
            target.tags.remove(name)
        else:
            target.tags.add(name)

    def device():
        target = vm()
        if target.devices["pci"]:
            target.devices["pci"].unassign("dom0", "00_1f.2")
        elif "virt_mode" not in target._property_values:
            target.devices["pci"].assign(DeviceAssignment("dom0", "00_1f.2", {"x": "1"}))

    def volume_size():  # the storage layer edits the config in place, without events
        target = vm()
        target.volume_config["private"]["size"] = rng.randint(1, 10) * 2**30

    def volume_revisions():
        vm().volume_config["private"]["revisions_to_keep"] = rng.randint(0, 5)

    def new_vm():
        app.add_new_vm("AppVM", name=f"vm{rng.randint(0, 10**6)}", label="red")

    def remove_vm():
        candidates = [v for v in app.domains if v.name.startswith("vm")]
        if candidates:
            del app.domains[rng.choice(candidates)]

    def global_prop():
        app.default_qrexec_timeout = rng.randint(10, 100)

    return [set_memory, reset_memory, set_label, feature, drop_feature, tag, device,
            volume_size, volume_revisions, new_vm, remove_vm, global_prop]


def test_reused_parts_always_equal_a_full_rebuild(basic_app):
    rng = random.Random(20261127)
    mutations = _mutations(basic_app, rng)
    for step in range(400):
        rng.choice(mutations)()
        if step % 3 == 0:
            assert serialize(basic_app) == serialize(basic_app, use_cache=False), step
    basic_app.save()
    path = basic_app.store.path
    expected = serialize(basic_app, use_cache=False)
    basic_app.close()
    with Qubes(path) as again:
        assert serialize(again, use_cache=False) == expected


def test_unchanged_vm_is_not_rebuilt(basic_app, monkeypatch):
    import qubes_core.store as store

    serialize(basic_app)
    built = []
    real = store._domain_element
    monkeypatch.setattr(store, "_domain_element", lambda vm: built.append(vm.name) or real(vm))
    basic_app.domains["work"].features["x"] = "1"
    serialize(basic_app)
    assert built == ["work"]
