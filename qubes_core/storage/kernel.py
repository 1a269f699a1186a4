"""The ``linux-kernel`` driver: read-only kernels that dom0 provides to VMs.

``dir_path/VERSION/`` holds ``vmlinuz``, ``initramfs`` and ``modules.img``;
a VM's kernel volume has the version as its vid. Nothing is copied: the VM
reads ``modules.img`` as a read-only disk.
"""

from __future__ import annotations

import os
from typing import Any

from qubes_core.storage import Pool, StoragePoolException, StorageVM, Volume, fileops

DEFAULT_DIR = "/var/lib/qubes/vm-kernels"


class LinuxKernelVolume(Volume):
    """A VM's kernel: read-only files of one installed kernel version, never copied."""

    pool: LinuxKernelPool

    @property
    def kernel_dir(self) -> str:
        """The directory of this kernel version."""
        return os.path.join(self.pool.dir_path, self.vid)

    @property
    def rw(self) -> bool:
        """A kernel is never written by its VM."""
        return False

    @rw.setter
    def rw(self, value: bool) -> None:
        if value:
            raise StoragePoolException(f"kernel volume {self.vid} is read-only")

    @property
    def size(self) -> int:
        """The size of the kernel's ``modules.img`` (0 when missing)."""
        try:
            return os.stat(os.path.join(self.kernel_dir, "modules.img")).st_size
        except FileNotFoundError:
            return 0

    @property
    def usage(self) -> int:
        """The same as its size."""
        return self.size

    def block_device(self) -> str:
        """The kernel's ``modules.img`` (whether it is installed is ``verify``'s question:
        a start refuses a missing kernel before any disk is attached)."""
        return os.path.join(self.kernel_dir, "modules.img")

    def export_path(self) -> str:
        """The kernel's ``modules.img``; refused when it is missing."""
        path = self.block_device()
        if not os.path.exists(path):
            raise StoragePoolException(f"kernel {self.vid} has no modules.img")
        return path

    def do_verify(self) -> bool:
        """Whether the kernel is installed (``vmlinuz`` present); else an error naming the
        installed ones."""
        if not os.path.exists(os.path.join(self.kernel_dir, "vmlinuz")):
            installed = ", ".join(self.pool.kernels()) or "none"
            raise StoragePoolException(
                f"kernel {self.vid!r} is not installed (no {self.kernel_dir}/vmlinuz; "
                f"installed in pool {self.pool.name}: {installed}); install it, or set the "
                "VM's kernel to an installed version, or to '' to boot the VM's own kernel")
        return True

    def do_create(self) -> None:
        """Kernels are installed with dom0's packages, not created per VM."""

    def do_remove(self) -> None:
        """A kernel outlives the VMs that used it."""

    def do_start(self) -> None:
        """Check that the kernel is installed; its files are used as they are."""
        self.do_verify()

    def do_stop(self) -> None:
        """Nothing was copied at start."""


class LinuxKernelPool(Pool):
    """dom0's installed kernels, one directory per version (``vmlinuz``, ``modules.img``)."""

    driver = "linux-kernel"
    known_options = {"dir_path": DEFAULT_DIR}

    @property
    def dir_path(self) -> str:
        """The directory holding one directory per kernel version."""
        return self.config.get("dir_path", DEFAULT_DIR)

    @property
    def revisions_to_keep(self) -> int:
        """Kernels are read-only: there is never an old revision to keep."""
        return 0

    @revisions_to_keep.setter
    def revisions_to_keep(self, value: object) -> None:
        raise StoragePoolException(
            f"pool {self.name}: kernels are read-only and have no revisions to keep")

    def setup(self) -> None:
        """Create the kernels' directory (empty until dom0 installs a kernel)."""
        if not os.path.isabs(self.dir_path):
            raise StoragePoolException(
                f"pool {self.name!r}: dir_path must be an absolute directory, "
                f"not {self.dir_path!r}")
        fileops.make_dirs(self.dir_path)

    def init_volume(self, vm: StorageVM, config: dict[str, Any],
                    source: Volume | None = None) -> LinuxKernelVolume:
        """The kernel volume of ``vm`` (named by its ``kernel`` property)."""
        return LinuxKernelVolume(self, config, source)

    def get_volume(self, vid: str) -> LinuxKernelVolume:
        """The kernel volume of version ``vid``."""
        return LinuxKernelVolume(self, {"name": "kernel", "vid": vid})

    def kernels(self) -> list[str]:
        """Installed kernel versions."""
        try:
            return sorted(entry for entry in os.listdir(self.dir_path)
                          if os.path.exists(os.path.join(self.dir_path, entry, "vmlinuz")))
        except FileNotFoundError:
            return []
