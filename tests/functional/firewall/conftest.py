"""Firewall functional fixtures: the runtime tests' app on libvirt's test driver."""

from tests.unit.runtime.support import lifecycle_app, runtime  # noqa: F401
