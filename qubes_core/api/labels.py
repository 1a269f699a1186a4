"""Label methods: ``admin.label.*`` (global: labels belong to the whole system)."""

from __future__ import annotations

from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method


@method("admin.label.List", scope="global", read=True, dest="adminvm")
async def label_list(call: ApiCall) -> str:
    """The names of the labels the caller may see, in index order."""
    labels = sorted(call.app.labels.values(), key=lambda label: label.index)
    return "".join(label.name + "\n" for label in call.filter(labels))


@method("admin.label.Get", scope="global", read=True, argument=True, dest="adminvm")
async def label_get(call: ApiCall) -> str:
    """A label's colour (``0xRRGGBB``)."""
    return call.app.get_label(call.arg).color


@method("admin.label.Index", scope="global", read=True, argument=True, dest="adminvm")
async def label_index(call: ApiCall) -> str:
    """A label's index, the number qubes.xml and the GUI know it by."""
    return str(call.app.get_label(call.arg).index)


@method("admin.label.Create", scope="global", write=True, argument=True, payload=True,
        dest="adminvm", max_payload=64)
async def label_create(call: ApiCall) -> None:
    """Add a label with the colour given as payload; it takes the next free index."""
    color = call.payload_text("label colour", ascii_only=True).strip()
    call.app.add_label(call.arg, color)


@method("admin.label.Remove", scope="global", write=True, argument=True, dest="adminvm")
async def label_remove(call: ApiCall) -> None:
    """Remove a label; the eight default labels and labels a VM uses are refused."""
    call.app.remove_label(call.arg)
