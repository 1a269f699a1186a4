"""VM collection methods: list, classes, create, create a DispVM, remove.

``admin.vm.Create.CLASS[+TEMPLATE]`` takes ``name=N label=L`` as payload;
``admin.vm.CreateInPool.CLASS`` also ``pool=P`` or ``pool:VOLUME=P``. A VM is
created in the model, then on disk; if the disk part fails, it is taken out of
the model again, so a failed call leaves nothing behind.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.api.untrusted import parse_key_values
from qubes_core.vm import vm_classes
from qubes_core.vm.adminvm import AdminVM
from qubes_core.vm.base import BaseVM
from qubes_core.vm.dispvm import DispVM
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes

log = logging.getLogger("qubes.api.vm")


def vm_line(vm: BaseVM, state: str) -> str:
    """The VM's line in ``admin.vm.List`` (name, class, power state, UUID), as clients
    parse it."""
    return f"{vm.name} class={vm.klass} state={state} uuid={vm.uuid}\n"


@method("admin.vmclass.List", scope="global", read=True, dest="adminvm")
async def vmclass_list(call: ApiCall) -> str:
    """The VM classes this installation knows, AdminVM included, one a line."""
    return "".join(name + "\n" for name in sorted(vm_classes()))


@method("admin.vm.List", scope="global", read=True, dest="any")
async def vm_list(call: ApiCall) -> str:
    """Every VM the caller may see (dom0 as destination), or just the destination VM."""
    vms = sorted(call.app.domains, key=lambda vm: vm.name) if call.dest.qid == 0 else [
        call.dest]
    shown = call.filter(vms)
    states = await call.app.runtime.power_states(shown)
    return "".join(vm_line(vm, states[vm.qid]) for vm in shown)


def _runnable(vm: BaseVM) -> QubesVM:
    """A VM just created: one of a class that runs (only those are created)."""
    if not isinstance(vm, QubesVM):
        raise exc.QubesVMError(vm, f"{vm} is not a VM that runs")
    return vm


def _forget(app: Qubes, vm: BaseVM) -> None:
    """Take a VM that could not be created out of the model again."""
    try:
        del app.domains[vm]
    except exc.QubesException:
        log.exception("cannot take the half-created %s out of the model", vm)


def _check_pools(call: ApiCall, cls: type[BaseVM], pools: dict[str, str]) -> None:
    """Refuse unknown pools and volumes before the VM joins the model (the volumes of a
    class that declares none are known only once it exists)."""
    names = None if cls.volume_layout is None else set(cls.volume_layout)
    for key, pool in pools.items():
        if pool not in call.app.pools:
            raise exc.QubesValueError(f"no such pool: {pool!r}")
        volume = key[len("pool:"):] if key != "pool" else None
        if volume is not None and names is not None and volume not in names:
            raise exc.QubesValueError(f"{cls.__name__} has no volume {volume!r}")


def _apply_pools(call: ApiCall, vm: BaseVM, pools: dict[str, str]) -> None:
    for key, pool in pools.items():
        if pool not in call.app.pools:
            raise exc.QubesValueError(f"no such pool: {pool!r}")
        volumes = list(vm.volume_config) if key == "pool" else [key[len("pool:"):]]
        for volume in volumes:
            if volume not in vm.volume_config:
                raise exc.QubesValueError(f"{vm.klass} has no volume {volume!r}")
            if volume == "kernel":
                continue
            if key == "pool" and vm.volume_config[volume].get("snap_on_start"):
                continue  # a snapshot lives in its source's pool
            vm.volume_config[volume]["pool"] = pool


async def _create(call: ApiCall, in_pool: bool) -> None:
    vmclass = call.method.rsplit(".", 1)[1]
    classes = vm_classes()
    if vmclass not in classes or issubclass(classes[vmclass], AdminVM):
        raise exc.QubesValueError(f"cannot create a VM of class {vmclass!r}")
    text = call.payload_text("VM creation parameters", ascii_only=True)
    params = parse_key_values(text, "VM creation parameters", {"name", "label", "pool"},
                              prefixes=("pool:",) if in_pool else ())
    if "pool" in params and not in_pool:
        raise exc.QubesValueError("pool= is only accepted by admin.vm.CreateInPool")
    for key in ("name", "label"):
        if key not in params:
            raise exc.QubesValueError(f"VM creation parameters: {key}= is missing")
    label = call.app.get_label(params["label"])  # QubesLabelNotFoundError, as the reference
    kwargs: dict[str, Any] = {"name": params["name"], "label": label}
    if call.arg:
        kwargs["template"] = call.arg
    elif vmclass == "AppVM" and call.app.default_template is None:
        raise exc.QubesValueError(
            "no template given (admin.vm.Create.AppVM+TEMPLATE) and no default_template")
    elif issubclass(classes[vmclass], DispVM):
        raise exc.QubesValueError("a DispVM needs its AppVM: admin.vm.Create.DispVM+APPVM")
    if call.arg and "template" not in {p.__name__ for p in classes[vmclass].property_list()}:
        raise exc.QubesValueError(f"a {vmclass} has no template")
    pools = {k: v for k, v in params.items() if k.startswith("pool")}
    _check_pools(call, classes[vmclass], pools)
    vm = call.app.add_new_vm(vmclass, **kwargs)
    try:
        _apply_pools(call, vm, pools)
        await _runnable(vm).create_on_disk()
    except BaseException:
        _forget(call.app, vm)
        raise


def _declare_create() -> None:
    for vmclass, cls in sorted(vm_classes().items()):
        if issubclass(cls, AdminVM):
            continue

        async def create(call: ApiCall) -> None:
            await _create(call, in_pool=False)

        async def create_in_pool(call: ApiCall) -> None:
            await _create(call, in_pool=True)

        method(f"admin.vm.Create.{vmclass}", scope="global", write=True, argument=True,
               argument_optional=True, payload=True, dest="adminvm",
               max_payload=4096)(create)
        method(f"admin.vm.CreateInPool.{vmclass}", scope="global", write=True, argument=True,
               argument_optional=True, payload=True, dest="adminvm",
               max_payload=4096)(create_in_pool)


_declare_create()


@method("admin.vm.CreateDisposable", scope="global", write=True, dest="any")
async def create_disposable(call: ApiCall) -> str:
    """A new DispVM (removed when it stops) of the destination, or of the caller's default."""
    appvm = call.dest if call.dest.qid != 0 else call.src.default_dispvm
    if appvm is None:
        appvm = call.app.default_dispvm
    if appvm is None:
        raise exc.QubesValueError("no AppVM given and no default_dispvm to create a DispVM of")
    if not appvm.template_for_dispvms:
        raise exc.QubesValueError(
            f"{appvm} is not a template for DispVMs (set its template_for_dispvms first)")
    vm = call.app.add_new_vm("DispVM", template=appvm, auto_cleanup=True)
    try:
        await _runnable(vm).create_on_disk()
    except BaseException:
        _forget(call.app, vm)
        raise
    return vm.name


@method("admin.vm.Remove", scope="global", write=True, dest="vm")
async def vm_remove(call: ApiCall) -> None:
    """Refused while the VM starts, runs or its volumes are in use (see ``vm.remove``)."""
    await call.dest_vm().remove()
