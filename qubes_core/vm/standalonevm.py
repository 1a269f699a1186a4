"""StandaloneVM: owns its root and private volumes; no template."""

from __future__ import annotations

from qubes_core.properties import Property
from qubes_core.vm import volumes
from qubes_core.vm.qubesvm import QubesVM


class StandaloneVM(QubesVM):
    """A VM with no template: it owns its root and private volumes, both kept at stop."""

    volume_layout = volumes.SELF_CONTAINED
    icon_kind = "standalonevm"

    template_for_dispvms = Property(
        "template_for_dispvms", type=bool, default=False,
        doc="Whether DispVMs may be created from this VM.",
    )
