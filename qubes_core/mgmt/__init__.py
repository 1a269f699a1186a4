"""Management front ends' shared library: what the Salt modules and ``qubesctl`` do.

Everything here talks to qubesd through :mod:`qubes_core.client` only, so it
runs wherever a client can reach the installation's socket. The Salt loader
modules (``_modules/``, ``_states/``, the ext_pillar and grains) are thin
adapters over these modules: argument handling and return shapes there, the
decisions (what differs, what would change, what to call) here, testable
without Salt.
"""
