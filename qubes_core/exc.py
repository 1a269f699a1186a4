"""Exceptions.

The class names are part of the Admin API wire format (the reply carries the
exception type's name), so they keep the names existing Qubes clients expect.
"""

from __future__ import annotations


class QubesException(Exception):
    """Base of every error that is meant to be shown to the user."""


class QubesVMNotFoundError(QubesException, KeyError):
    """Raised when no VM has the name, qid or UUID asked for (in the model or an API call)."""

    def __init__(self, vmname: object, msg: str | None = None):
        super().__init__(msg or f"No such domain: {vmname!r}")
        self.vmname = vmname

    def __str__(self) -> str:  # KeyError would quote the message
        return QubesException.__str__(self)


class QubesVMInvalidUUIDError(QubesException):
    """For a VM named by a malformed UUID; kept for clients, nothing here raises it yet
    (a bad ``uuid:`` name gives QubesVMNotFoundError).
    """


class QubesVMError(QubesException):
    """Error that concerns one VM."""

    def __init__(self, vm: object, msg: str):
        super().__init__(msg)
        self.vm = vm


class QubesVMInUseError(QubesVMError):
    """The VM is referenced by other VMs or by global properties."""


class QubesVMNotStartedError(QubesVMError):
    """Raised when shutting down or killing a VM that is not running (or the runtime has it off)."""


class QubesVMNotRunningError(QubesVMNotStartedError):
    """Raised when pausing a VM that is not running."""


class QubesVMNotPausedError(QubesVMNotStartedError):
    """Raised when unpausing a VM that is not paused."""


class QubesVMNotSuspendedError(QubesVMError):
    """For resuming a VM that is not suspended; kept for clients, nothing here suspends VMs."""


class QubesVMNotHaltedError(QubesVMError):
    """Raised when an action needs the VM (or a pool's VMs) halted: start, remove, a template
    change, volume and pool changes.
    """


class QubesVMShutdownTimeoutError(QubesVMError):
    """The VM did not stop within the time it was given."""


class QubesVMAlreadyExistsError(QubesException):
    """Raised when a new or added VM would take a name another VM already has."""


class QubesValueError(QubesException, ValueError):
    """Raised when a value from a user, an API call or a file is refused; the message says why."""


class QubesPropertyValueError(QubesValueError):
    """A property was given a value it cannot take."""

    def __init__(self, holder: object, prop: object, value: object, msg: str | None = None):
        name = getattr(prop, "__name__", prop)
        super().__init__(msg or f"Invalid value {value!r} for property {name!r} of {holder}")
        self.holder = holder
        self.prop = prop
        self.value = value


class QubesNoSuchPropertyError(QubesException, AttributeError):
    """Raised when a property name is not declared on the VM's (or the app's) class."""

    def __init__(self, holder: object, prop_name: str, msg: str | None = None):
        super().__init__(msg or f"Invalid property {prop_name!r} of {holder}")
        self.holder = holder
        self.prop = prop_name


class QubesNotImplementedError(QubesException, NotImplementedError):
    """For an operation a driver or runtime lacks; kept for clients, nothing here raises it yet."""


class QubesFeatureNotFoundError(QubesException, KeyError):
    """Raised when reading or deleting a feature the VM (or the chain asked about) lacks."""

    def __init__(self, domain: object, feature: str):
        super().__init__(f"Feature not set for domain {domain}: {feature}")
        self.feature = feature
        self.vm = domain

    def __str__(self) -> str:
        return QubesException.__str__(self)


class QubesTagNotFoundError(QubesException, KeyError):
    """Raised when removing a tag the VM does not have."""

    def __init__(self, domain: object, tag: str):
        super().__init__(f"Tag not set for domain {domain}: {tag}")
        self.vm = domain
        self.tag = tag

    def __str__(self) -> str:
        return QubesException.__str__(self)


class QubesLabelNotFoundError(QubesException, KeyError):
    """Raised when a label name, index or ``label-N`` id is not one of the installation's."""

    def __init__(self, label: object):
        super().__init__(f"Label does not exist: {label}")
        self.label = label

    def __str__(self) -> str:
        return QubesException.__str__(self)


class QubesPoolInUseError(QubesException):
    """Raised when removing a pool that VM volumes still use; the message names the VMs."""


class QubesStoreError(QubesException):
    """qubes.xml could not be read, locked or written."""


class StoragePoolException(QubesException):
    """Raised by pools and volumes: unknown pool or volume, bad volume id, or a failed operation."""


class DeviceAlreadyAssigned(QubesException, KeyError):
    """Raised when assigning a device that is already assigned to the VM."""

    def __str__(self) -> str:
        return QubesException.__str__(self)


class DeviceNotAssigned(QubesException, KeyError):
    """Raised when unassigning a device that is not assigned to the VM."""

    def __str__(self) -> str:
        return QubesException.__str__(self)


class ProtocolError(AssertionError):
    """The request broke the protocol; the API replies with this type's name."""


class DeviceNotFound(QubesException, KeyError):
    """Raised when a device the request names is not exposed by its backend."""

    def __str__(self) -> str:
        return QubesException.__str__(self)


class DeviceAlreadyAttached(QubesException, KeyError):
    """Raised when attaching a device that is attached already."""

    def __str__(self) -> str:
        return QubesException.__str__(self)


class UnexpectedDeviceProperty(QubesException, ValueError):
    """Raised when a device payload names another device than the request's argument."""


class QubesUnrecognizedDeviceAssignmentMode(ProtocolError):
    """Raised for an assignment mode other than required, auto-attach, ask-to-attach."""


class QubesBackupProfileNotFoundError(QubesException):
    """Raised when a backup names a profile that does not exist."""


class BackupCancelledError(QubesException):
    """Raised to the caller of a backup that ``admin.backup.Cancel`` stopped."""


class BackupAlreadyRunningError(QubesException):
    """Raised when a backup of a profile is asked for while one of it runs."""


class PermissionDenied(Exception):
    """The caller may not do this; the API closes the connection without detail."""
