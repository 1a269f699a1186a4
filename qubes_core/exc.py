"""Exceptions.

The class names are part of the Admin API wire format (the reply carries the
exception type's name), so they keep the names existing Qubes clients expect.
"""

from __future__ import annotations


class QubesException(Exception):
    """Base of every error that is meant to be shown to the user."""


class QubesVMNotFoundError(QubesException, KeyError):
    def __init__(self, vmname: object, msg: str | None = None):
        super().__init__(msg or f"No such domain: {vmname!r}")
        self.vmname = vmname

    def __str__(self) -> str:  # KeyError would quote the message
        return QubesException.__str__(self)


class QubesVMInvalidUUIDError(QubesException):
    pass


class QubesVMError(QubesException):
    """Error that concerns one VM."""

    def __init__(self, vm: object, msg: str):
        super().__init__(msg)
        self.vm = vm


class QubesVMInUseError(QubesVMError):
    """The VM is referenced by other VMs or by global properties."""


class QubesVMNotStartedError(QubesVMError):
    pass


class QubesVMNotRunningError(QubesVMNotStartedError):
    pass


class QubesVMNotPausedError(QubesVMNotStartedError):
    pass


class QubesVMNotSuspendedError(QubesVMError):
    pass


class QubesVMNotHaltedError(QubesVMError):
    pass


class QubesVMShutdownTimeoutError(QubesVMError):
    """The VM did not stop within the time it was given."""


class QubesVMAlreadyExistsError(QubesException):
    pass


class QubesValueError(QubesException, ValueError):
    pass


class QubesPropertyValueError(QubesValueError):
    """A property was given a value it cannot take."""

    def __init__(self, holder: object, prop: object, value: object, msg: str | None = None):
        name = getattr(prop, "__name__", prop)
        super().__init__(msg or f"Invalid value {value!r} for property {name!r} of {holder}")
        self.holder = holder
        self.prop = prop
        self.value = value


class QubesNoSuchPropertyError(QubesException, AttributeError):
    def __init__(self, holder: object, prop_name: str, msg: str | None = None):
        super().__init__(msg or f"Invalid property {prop_name!r} of {holder}")
        self.holder = holder
        self.prop = prop_name


class QubesNotImplementedError(QubesException, NotImplementedError):
    pass


class QubesFeatureNotFoundError(QubesException, KeyError):
    def __init__(self, domain: object, feature: str):
        super().__init__(f"Feature not set for domain {domain}: {feature}")
        self.feature = feature
        self.vm = domain

    def __str__(self) -> str:
        return QubesException.__str__(self)


class QubesTagNotFoundError(QubesException, KeyError):
    def __init__(self, domain: object, tag: str):
        super().__init__(f"Tag not set for domain {domain}: {tag}")
        self.vm = domain
        self.tag = tag

    def __str__(self) -> str:
        return QubesException.__str__(self)


class QubesLabelNotFoundError(QubesException, KeyError):
    def __init__(self, label: object):
        super().__init__(f"Label does not exist: {label}")
        self.label = label

    def __str__(self) -> str:
        return QubesException.__str__(self)


class QubesPoolInUseError(QubesException):
    pass


class QubesStoreError(QubesException):
    """qubes.xml could not be read, locked or written."""


class StoragePoolException(QubesException):
    pass


class DeviceAlreadyAssigned(QubesException, KeyError):
    def __str__(self) -> str:
        return QubesException.__str__(self)


class DeviceNotAssigned(QubesException, KeyError):
    def __str__(self) -> str:
        return QubesException.__str__(self)


class ProtocolError(AssertionError):
    """The request broke the protocol; the API replies with this type's name."""


class PermissionDenied(Exception):
    """The caller may not do this; the API closes the connection without detail."""
