"""The ``linux-kernel`` pool of a new store, and VM starts with and without dom0 kernels.

VMs run on libvirt's test driver (nothing executes inside); the kernel pool is
a real directory, empty at first as on a machine where no VM kernel is installed.
"""

from __future__ import annotations

import os
import shutil

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.backend import make_runtime

KERNEL = "6.6.21-1.fc37"


@pytest.fixture
async def kernel_app(tmp_path):
    runtime = make_runtime("test")  # libvirt-python is a dependency: no guard
    app = Qubes.create_empty_store(tmp_path / "qubes.xml", runtime=runtime, setup_check="auto")
    runtime.bind(app)
    template = app.add_new_vm("TemplateVM", name="tpl", label="black")
    app.default_template = template
    app.add_new_vm("AppVM", name="work", label="blue")
    for vm in app.domains:
        for config in getattr(vm, "volume_config", {}).values():
            if config.get("size"):
                config["size"] = 16 * 1024**2
    yield app
    for vm in list(app.domains):
        if vm.qid and vm.is_running():
            await vm.kill()
    runtime.close()
    app.close()


def install_kernel(app: Qubes, version: str) -> str:
    directory = os.path.join(app.pools["linux-kernel"].dir_path, version)
    os.makedirs(directory)
    for name, size in (("vmlinuz", 4096), ("initramfs", 4096), ("modules.img", 1024**2)):
        with open(os.path.join(directory, name), "wb") as handle:
            handle.truncate(size)
    return directory


def test_new_store_has_the_kernel_pool_of_the_reference_layout(tmp_path):
    app = Qubes.create_empty_store(tmp_path / "qubes.xml", setup_check="auto")
    try:
        pool = app.pools["linux-kernel"]
        assert pool.driver == "linux-kernel"
        assert pool.dir_path == str(tmp_path / "vm-kernels")
        assert os.path.isdir(tmp_path / "vm-kernels") and pool.kernels() == []
        assert app.default_pool == "varlibqubes", "kernels are no default pool for volumes"
    finally:
        app.close()
    xml = (tmp_path / "qubes.xml").read_text()
    assert 'driver="linux-kernel"' in xml and f'dir_path="{tmp_path}/vm-kernels"' in xml
    again = Qubes(tmp_path / "qubes.xml")
    try:
        assert again.pools["linux-kernel"].dir_path == str(tmp_path / "vm-kernels")
    finally:
        again.close()


async def start_and_kill(vm) -> None:
    await vm.start()
    assert vm.get_power_state() == "Running"
    await vm.kill()


async def test_vms_without_dom0_kernel_start_with_an_empty_kernel_pool(kernel_app):
    app = kernel_app
    work = app.domains["work"]
    await app.domains["tpl"].storage.create()
    await work.storage.create()
    assert work.kernel == "" and "kernel" not in work.volumes
    await start_and_kill(work)


async def test_missing_kernel_is_a_clear_error_at_start(kernel_app):
    app = kernel_app
    work = app.domains["work"]
    await app.domains["tpl"].storage.create()
    await work.storage.create()
    with pytest.raises(exc.QubesPropertyValueError, match="not installed"):
        work.kernel = KERNEL  # a kernel that is not installed is refused at once
    installed = install_kernel(app, KERNEL)
    work.kernel = KERNEL
    shutil.rmtree(installed)  # ... and one removed since fails the start clearly
    with pytest.raises(exc.QubesException, match=f"kernel '{KERNEL}' is not installed") as info:
        await work.start()
    assert "installed in pool linux-kernel: none" in str(info.value)
    assert work.get_power_state() == "Halted"
    assert not os.path.exists(work.volumes["private"].path_dirty), "the start was undone"

    # Following the global default (through the template) fails the same way.
    del work.kernel
    install_kernel(app, KERNEL)
    app.default_kernel = KERNEL
    shutil.rmtree(installed)
    assert work.kernel == KERNEL
    with pytest.raises(exc.QubesException, match=f"kernel '{KERNEL}' is not installed"):
        await work.start()

    install_kernel(app, KERNEL)
    await work.start()
    assert work.volumes["kernel"].block_device().endswith(f"{KERNEL}/modules.img")
    assert work.volume_config["kernel"]["vid"] == KERNEL
    await work.kill()
    assert os.path.exists(os.path.join(app.pools["linux-kernel"].dir_path, KERNEL, "vmlinuz")), \
        "a VM's stop leaves dom0's kernel in place"
