"""qubes_core: the VM model, storage, Admin API and policy of a Qubes-style system."""

__version__ = "0.1.0"
