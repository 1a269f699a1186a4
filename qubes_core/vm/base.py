"""What every VM has, dom0 included: identity, label, features, tags, devices."""

from __future__ import annotations

import re
import uuid as uuidlib
from typing import TYPE_CHECKING, Any, ClassVar

from qubes_core import exc
from qubes_core.devices import DeviceManager
from qubes_core.events import handler
from qubes_core.features import Features, Tags
from qubes_core.properties import LabelProperty, Property, PropertyHolder, StatelessProperty
from qubes_core.qubesdb import InMemoryQubesDB
from qubes_core.vm import volumes

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.storage import Volume

MAX_NAME_LENGTH = 31
NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*$")
# Words with a meaning in policies and tools; "domain-0" is Xen's own name for dom0.
RESERVED_NAMES = frozenset({"none", "default", "dom0", "domain-0", "adminvm", "anyvm",
                            "dispvm"})
MAX_QID = 65534

POWER_STATES = ("Halted", "Transient", "Running", "Paused", "Suspended", "Halting",
                "Dying", "Crashed")


def validate_name(holder: PropertyHolder, prop: Any, value: Any) -> str:
    """A VM name: a letter first, then letters, digits, ``_ . -``; at most 31 characters."""
    if not isinstance(value, str):
        raise exc.QubesValueError(f"VM name must be a string, not {type(value).__name__}")
    if len(value) > MAX_NAME_LENGTH:
        raise exc.QubesValueError(
            f"VM name {value!r} is longer than {MAX_NAME_LENGTH} characters"
        )
    if not NAME_RE.match(value):
        raise exc.QubesValueError(
            f"VM name {value!r} is invalid: it must start with a letter and hold only "
            "letters, digits, '_', '.' and '-'"
        )
    if value.endswith("-dm"):
        raise exc.QubesValueError(f"VM name {value!r} may not end in '-dm' (device models)")
    if value.lower() in RESERVED_NAMES and not (
            value == "dom0" and holder.property_own_value("qid") == 0):
        raise exc.QubesValueError(f"VM name {value!r} is reserved")
    return value


def _validate_qid(holder: Any, prop: Any, value: int) -> int:
    if not 0 <= value <= MAX_QID:
        raise ValueError(f"qid must be between 0 and {MAX_QID}")
    return value


def _validate_uuid(holder: Any, prop: Any, value: Any) -> uuidlib.UUID:
    if isinstance(value, uuidlib.UUID):
        return value
    try:
        return uuidlib.UUID(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


class BaseVM(PropertyHolder):
    """A domain: dom0 or a VM."""

    qid = Property("qid", type=int, write_once=True, clone=False, load_stage=0,
                   setter=_validate_qid, doc="Internal, persistent identifier of the VM.")
    name = Property("name", type=str, write_once=True, clone=False, load_stage=1,
                    setter=validate_name, doc="User-facing name of the VM; cannot change.")
    uuid: Property[uuidlib.UUID | None] = Property(
        "uuid", write_once=True, clone=False, load_stage=0, type=None, setter=_validate_uuid,
        default=None, doc="UUID of the VM, assigned when it is created.")
    label = LabelProperty("label", doc="Colourful label of the VM's windows.")
    klass = StatelessProperty("klass", lambda vm: type(vm).__name__,
                              doc="Class of the VM (AppVM, TemplateVM, ...).")
    icon = StatelessProperty("icon", lambda vm: vm.icon_name(), type=str,
                             doc="Freedesktop icon name of the VM (class and label).")

    # Declared for every domain, as a domain that lacks them has them (dom0 has no
    # template nor netvm): the classes that have them declare them as properties
    # (:meth:`has_property` tells which).
    template: BaseVM | None = None
    netvm: BaseVM | None = None
    provides_network: bool = False
    template_for_dispvms: bool = False
    default_dispvm: BaseVM | None = None
    management_dispvm: BaseVM | None = None
    guivm: BaseVM | None = None
    #: The kernel its kernel volume follows (None: dom0's own are not the model's).
    kernel: str | None = None
    #: Every class declares it (dom0's and a VM's own defaults).
    devices_denied: str

    #: The volumes a new VM of this class gets (qubes_core.vm.volumes); None: none
    #: known before it exists.
    volume_layout: ClassVar[volumes.Layout | None] = None
    #: Directory of the class's VMs: their volumes' in a pool, their own files' in
    #: the installation (``appvms``; ``vm-templates`` for templates).
    vid_dir: ClassVar[str] = "appvms"
    #: Whether VMs of the class are disposable: DispVM and its subclasses (for those
    #: that do not import the model, such as the policy).
    disposable: ClassVar[bool] = False
    #: Qubes' icon of the class, before the label: ``appvm-red``, ``dispvm-red``...
    icon_kind: ClassVar[str] = "appvm"

    def __init__(self, app: Qubes, **kwargs: Any) -> None:
        self.app = app
        self.features = Features(self)
        self.tags = Tags(self)
        self.devices = DeviceManager(self)
        self.volume_config: dict[str, dict[str, Any]] = {}
        self.unknown_properties: dict[str, str] = {}
        self.qdb = InMemoryQubesDB()
        self.change_counter = 0
        super().__init__(**kwargs)

    def owning_app(self) -> Qubes:
        return self.app

    def __str__(self) -> str:
        name = self.property_own_value("name")
        return name if name is not None else f"<unnamed {type(self).__name__}>"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"

    def __lt__(self, other: BaseVM) -> bool:
        return self.name < other.name

    @handler("*")
    def _count_change(self, event: str, **kwargs: Any) -> None:
        """Every change of what qubes.xml keeps of a VM fires an event: count them."""
        self.change_counter += 1

    def icon_name(self) -> str:
        """``appvm-red``, ``servicevm-red``, ``dispvm-red``, ...: as Qubes names them
        (templates, and AppVMs DispVMs are made of, have ``templatevm-``)."""
        label = self.label.name
        if self.features.get("servicevm", False):
            return "servicevm-" + label
        return f"{self.icon_kind}-{label}"

    @property
    def volumes(self) -> dict[str, Volume]:
        """The domain's volumes by name: none here (dom0's disks are not the model's)."""
        return {}

    def get_power_state(self) -> str:
        return self.app.runtime.state(self)

    def is_running(self) -> bool:
        return self.get_power_state() not in ("Halted", "Crashed", "Dying")

    def is_halted(self) -> bool:
        return self.get_power_state() == "Halted"
