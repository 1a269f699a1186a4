"""The ``file`` driver: pools of the older layout (``P.img``, ``P-cow.img``).

Such a pool used device-mapper snapshots: ``P.img`` was written directly and
``P-cow.img`` kept the old blocks for a revert. This driver does not use
device-mapper: it runs the ``file-reflink`` logic with every snapshot made as
a sparse copy (never FICLONE), so a VM start copies the data of its images.
Starting is therefore slow and uses disk space in proportion to the data;
migrate the pool (``qubes-pool-migrate``) to ``file-reflink`` on a filesystem
that can reflink. An existing ``P-cow.img`` is no longer used; it is left in
place until the volume is removed or the pool migrated.
"""

from __future__ import annotations

import logging
import os

from qubes_core.storage import fileops
from qubes_core.storage.reflink import FileReflinkPool, FileReflinkVolume

log = logging.getLogger("qubes.storage.reflink")


class FileVolume(FileReflinkVolume):
    """A volume of a :class:`FilePool`."""

    @property
    def path_cow(self) -> str:
        """The device-mapper snapshot data of the older layout (ignored; removed with
        the volume)."""
        return self._base + "-cow.img"

    def do_start(self) -> None:
        """Start as file-reflink does, with sparse copies; an older ``-cow.img`` is ignored."""
        if os.path.exists(self.path_cow):
            log.info("Ignoring %s: device-mapper snapshot data, not used by this driver",
                     self.path_cow)
        super().do_start()

    def do_remove(self) -> None:
        """Remove the image files, the older layout's included."""
        fileops.remove(self.path_cow)
        super().do_remove()


class FilePool(FileReflinkPool):
    """A directory of image files on any filesystem; snapshots are sparse copies."""

    driver = "file"
    reflink = False
    volume_class = FileVolume
    known_options = {"dir_path": "", "revisions_to_keep": "1", "ephemeral_volatile": "False"}

    def setup(self) -> None:
        """Create the directory; any filesystem will do (no reflink check)."""
        dir_path = self.dir_path
        self.revisions_to_keep = self.config.get("revisions_to_keep", "1")
        fileops.make_dirs(dir_path)
