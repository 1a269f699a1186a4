"""Feature and tag methods: ``admin.vm.feature.*`` and ``admin.vm.tag.*``.

Features are string settings of a VM (``Set`` takes the value as payload);
``CheckWithTemplate``/``CheckWithNetvm``/``CheckWithAdminVM`` walk the chain the
model walks. Tags are bare names; ``tag.Get`` answers ``1`` or ``0``.
"""

from __future__ import annotations

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.features import validate_feature_name


@method("admin.vm.feature.List", scope="local", read=True)
async def feature_list(call: ApiCall) -> str:
    """The names of the features set on the VM itself, one a line."""
    return "".join(key + "\n" for key in call.dest.features)


@method("admin.vm.feature.Get", scope="local", read=True, argument=True)
async def feature_get(call: ApiCall) -> str:
    """The feature's value on the VM itself; a feature it lacks is an error."""
    return call.dest.features[call.arg]


@method("admin.vm.feature.CheckWithTemplate", scope="local", read=True, argument=True)
async def feature_check_with_template(call: ApiCall) -> str:
    """The feature from the VM, else from its template chain: what a template declares
    (its tools, say) holds for the VMs based on it.
    """
    return call.dest.features.check_with_template(call.arg)


@method("admin.vm.feature.CheckWithNetvm", scope="local", read=True, argument=True)
async def feature_check_with_netvm(call: ApiCall) -> str:
    """The feature from the VM, else from its netvm chain."""
    return call.dest.features.check_with_netvm(call.arg)


@method("admin.vm.feature.CheckWithAdminVM", scope="local", read=True, argument=True)
async def feature_check_with_adminvm(call: ApiCall) -> str:
    """The feature from the VM, else dom0's: a system-wide default a VM may override."""
    return call.dest.features.check_with_adminvm(call.arg)


@method("admin.vm.feature.CheckWithTemplateAndAdminVM", scope="local", read=True,
        argument=True)
async def feature_check_with_template_and_adminvm(call: ApiCall) -> str:
    """The feature from the VM's template chain, else dom0's."""
    found = call.dest.features.check_with_template(call.arg, None)
    if found is not None:
        return found
    return call.app.adminvm.features[call.arg]


@method("admin.vm.feature.Set", scope="local", write=True, argument=True, payload=True)
async def feature_set(call: ApiCall) -> None:
    """Set a feature on the VM to the payload text; extensions react to the change."""
    validate_feature_name(call.arg)
    value = call.payload_text(f"value of feature {call.arg!r}")
    call.dest.features[call.arg] = value


@method("admin.vm.feature.Remove", scope="local", write=True, argument=True)
async def feature_remove(call: ApiCall) -> None:
    """Remove a feature from the VM itself (one its template has stays visible through it)."""
    del call.dest.features[call.arg]


@method("admin.vm.tag.List", scope="local", read=True)
async def tag_list(call: ApiCall) -> str:
    """The VM's tags, one a line; policy rules match VMs by these."""
    return "".join(tag + "\n" for tag in call.dest.tags)


@method("admin.vm.tag.Get", scope="local", read=True, argument=True)
async def tag_get(call: ApiCall) -> str:
    """``1`` if the VM has the tag, else ``0`` (never an error)."""
    return "1" if call.arg in call.dest.tags else "0"


@method("admin.vm.tag.Set", scope="local", write=True, argument=True)
async def tag_set(call: ApiCall) -> None:
    """Give the VM a tag; setting one it has already is no error."""
    call.dest.tags.add(call.arg)


@method("admin.vm.tag.Remove", scope="local", write=True, argument=True)
async def tag_remove(call: ApiCall) -> None:
    """Take a tag from the VM; a tag it lacks is an error."""
    if call.arg not in call.dest.tags:
        raise exc.QubesTagNotFoundError(call.dest, call.arg)
    call.dest.tags.remove(call.arg)
