"""Runtime fixtures: the libvirt test driver and an app that runs on it."""

from tests.unit.runtime.support import lifecycle_app, runtime  # noqa: F401
