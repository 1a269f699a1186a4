"""Storage pools and volumes. Drivers are plugins of the ``qubes_core.storage`` entry point group.

A pool is configured in qubes.xml as ``<pool name=... driver=... option=.../>``;
its options are kept as strings so that an option this version does not know
survives a load and save. A volume is one disk of one VM (root, private,
volatile, kernel), described by a dict of ``vm.volume_config`` that the volume
reads and updates in place, so qubes.xml always holds its current settings.

Volume operations are coroutines: each takes the volume's own lock and runs
the driver's blocking file work in a worker thread, so that the event loop of
qubesd stays responsive while an image is copied. An ``OSError`` of that work
reaches the caller as a :class:`StoragePoolException` that names the volume and
the operation (the Admin API replies with it; the model is left as it was).

Each driver declares the options it takes (``known_options``). Adding a pool
refuses any other option; loading qubes.xml keeps them (an option of a newer
version survives a load and save), with a warning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, Protocol

from qubes_core import exc
from qubes_core.exc import StoragePoolException
from qubes_core.plugins import STORAGE_GROUP, load_plugins

log = logging.getLogger("qubes.storage")

__all__ = ["Pool", "UnavailablePool", "Volume", "StoragePoolException", "pool_drivers",
           "make_pool", "Storage", "MAX_VOLUME_SIZE"]

VID_RE = re.compile(r"^[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*$")
# A pool name is an API argument and an XML attribute: plain ASCII, short.
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
TRUE_OPTIONS = ("1", "true", "yes", "on")
FALSE_OPTIONS = ("0", "false", "no", "off")
# The largest size a file can have at all (off_t); a filesystem may allow less.
MAX_VOLUME_SIZE = 2**63 - 1


def parse_bool_option(pool: str, key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in TRUE_OPTIONS:
        return True
    if text in FALSE_OPTIONS:
        return False
    raise exc.QubesValueError(f"pool {pool!r}: option {key}={value!r} is not yes or no")


def parse_int(what: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise exc.QubesValueError(f"{what}: {value!r} is not an integer")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise exc.QubesValueError(f"{what}: {value!r} is not an integer") from None
    if number < minimum:
        raise exc.QubesValueError(f"{what}: {number} is less than {minimum}")
    if maximum is not None and number > maximum:
        raise exc.QubesValueError(
            f"{what} {number} is more than the largest possible ({maximum} bytes)")
    return number


def parse_size(volume: Volume, value: Any) -> int:
    """A volume size in bytes: a non-negative integer no file could exceed."""
    return parse_int(f"volume {volume.vid}: size", value, maximum=MAX_VOLUME_SIZE)


def check_vid(vid: str) -> str:
    """A volume id is a relative path of plain names: never ``..``, never absolute."""
    if not isinstance(vid, str) or not VID_RE.match(vid) or any(
            part in (".", "..") for part in vid.split("/")):
        raise StoragePoolException(f"invalid volume id {vid!r}")
    return vid


class StorageApp(Protocol):
    """What storage needs of the app (which it does not import): its pools, and its
    VMs (a snapshot's source may be another VM's volume)."""

    pools: dict[str, Pool]

    @property
    def domains(self) -> Iterable[StorageVM]:
        """Every VM of the app."""


class StorageVM(Protocol):
    """What storage needs of a VM: who it is, its volumes' config, its kernel, its app."""

    volume_config: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        """The VM's name."""

    @property
    def kernel(self) -> str | None:
        """The kernel version the kernel volume follows (empty: the VM's own)."""

    @property
    def app(self) -> StorageApp:
        """The app the VM belongs to."""


class Pool:
    """A named place volumes live in. Drivers subclass this."""

    driver = "unknown"
    usable = True
    # The options the driver takes, with their defaults: adding a pool refuses any
    # other; one found in qubes.xml (a newer version's) is kept but not used.
    known_options: dict[str, str] = {}

    def __init__(self, name: str, **config: Any):
        self.name = name
        self.config: dict[str, str] = {k: str(v) for k, v in config.items()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} driver={self.driver}>"

    def __str__(self) -> str:
        return self.name

    def xml_attributes(self) -> dict[str, str]:
        """The attributes of this pool's ``<pool>`` element in qubes.xml."""
        return {"name": self.name, "driver": self.driver, **self.config}

    @property
    def ephemeral_volatile(self) -> bool:
        """Whether volumes that can be ephemeral (volatile ones) are, unless they say."""
        return parse_bool_option(self.name, "ephemeral_volatile",
                                 self.config.get("ephemeral_volatile", "False"))

    @ephemeral_volatile.setter
    def ephemeral_volatile(self, value: bool) -> None:
        self.config["ephemeral_volatile"] = str(bool(value))

    def usage_details(self) -> dict[str, str]:
        """What ``admin.pool.UsageDetails`` shows: ``data_size`` and ``data_usage`` in
        bytes where known (drivers with metadata add theirs)."""
        details = {}
        for key, value in (("data_size", self.size), ("data_usage", self.usage)):
            if value is not None:
                details[key] = str(value)
        return details

    @property
    def dir_path(self) -> str:
        """The directory of the pool's files (its ``dir_path`` option); empty for a
        driver that keeps none."""
        return self.config.get("dir_path", "")

    def kernels(self) -> list[str] | None:
        """The kernel versions installed in the pool; None for a pool of disk images."""
        return None

    def volume_ids(self, app: StorageApp) -> list[str]:
        """The ids of the volumes of ``app``'s VMs that live in this pool."""
        return sorted({str(config["vid"]) for vm in app.domains
                       for config in vm.volume_config.values()
                       if config.get("pool") == self.name and config.get("vid")})

    @property
    def revisions_to_keep(self) -> int:
        """Revisions kept by volumes that do not set their own."""
        return parse_int(f"pool {self.name}: revisions_to_keep",
                         self.config.get("revisions_to_keep", "1"))

    @revisions_to_keep.setter
    def revisions_to_keep(self, value: Any) -> None:
        number = parse_int(f"pool {self.name}: revisions_to_keep", value)
        self.config["revisions_to_keep"] = str(number)

    def unknown_options(self) -> list[str]:
        """Options in this pool's config that its driver does not declare."""
        return sorted(set(self.config) - set(self.known_options))

    def describe_known_options(self) -> str:
        """The driver's options, for error messages."""
        return f"known options: {', '.join(sorted(self.known_options)) or 'none'}"

    def check_options(self) -> None:
        """Refuse options the driver does not declare (a typo must not be saved silently)."""
        if "ephemeral_volatile" in self.config:
            self.ephemeral_volatile = parse_bool_option(
                self.name, "ephemeral_volatile", self.config["ephemeral_volatile"])
        unknown = self.unknown_options()
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            raise exc.QubesValueError(
                f"pool {self.name!r}: unknown option{plural} {', '.join(unknown)} for driver "
                f"{self.driver} ({self.describe_known_options()})")

    # --- lifecycle of the pool itself --------------------------------------

    def setup(self) -> None:
        """Prepare the pool when it is added (not when qubes.xml is loaded).

        A setup that fails removes what it created, and only that.
        """

    def destroy(self) -> None:
        """Forget the pool (its volumes must be gone; data is left on disk)."""

    # --- volumes -------------------------------------------------------------

    def init_volume(self, vm: StorageVM, config: dict[str, Any],
                    source: Volume | None = None) -> Volume:
        """The volume of ``vm`` described by ``config`` (no disk access)."""
        raise StoragePoolException(f"pool {self.name}: driver {self.driver} has no volumes")

    def get_volume(self, vid: str) -> Volume:
        """A volume of this pool known only by its id (e.g. the source of a snapshot)."""
        raise StoragePoolException(f"pool {self.name}: no volume {vid!r}")

    # --- reporting -------------------------------------------------------------

    @property
    def size(self) -> int | None:
        """Bytes the pool can hold in total, if known."""
        return None

    @property
    def usage(self) -> int | None:
        """Bytes in use, if known."""
        return None

    def info(self) -> dict[str, str]:
        """What ``admin.pool.Info`` shows: driver, options, size and usage."""
        info = {"name": self.name, "driver": self.driver}
        info.update(self.config)
        for key in ("size", "usage"):
            value = getattr(self, key)
            if value is not None:
                info[key] = str(value)
        return info


class UnavailablePool(Pool):
    """A pool whose driver is not installed: kept so qubes.xml round-trips, not usable."""

    usable = False

    def __init__(self, name: str, driver: str, **config: Any):
        super().__init__(name, **config)
        self.driver = driver

    def unknown_options(self) -> list[str]:
        """Nothing is known of a driver that is not installed: every option is kept."""
        return []

    def init_volume(self, vm: StorageVM, config: dict[str, Any],
                    source: Volume | None = None) -> Volume:
        """The volume of ``vm`` this pool holds for ``config``."""
        raise StoragePoolException(
            f"pool {self.name}: storage driver {self.driver!r} is not installed")


class Volume:
    """One disk of one VM. Drivers implement the ``do_*`` methods (blocking, locked).

    The public coroutines take the volume's lock and run the ``do_*`` work in a
    thread; the cheap queries (``is_dirty``, ``revisions``, ``usage``) are plain
    methods and properties.
    """

    def __init__(self, pool: Pool, config: dict[str, Any], source: Volume | None = None):
        self.pool = pool
        self.config = config
        self.source = source
        self.lock = asyncio.Lock()
        check_vid(self.vid)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pool.name}:{self.vid}>"

    # --- configuration (read live from the VM's volume_config) -------------

    @property
    def name(self) -> str:
        """The volume's name in its VM (root, private, volatile, kernel)."""
        return str(self.config.get("name", ""))

    @property
    def vid(self) -> str:
        """The volume's identifier in its pool."""
        return str(self.config.get("vid", ""))

    @property
    def rw(self) -> bool:
        """Whether the VM may write to the volume."""
        return bool(self.config.get("rw", False))

    @rw.setter
    def rw(self, value: bool) -> None:
        self.config["rw"] = bool(value)

    @property
    def snap_on_start(self) -> bool:
        """Whether a start makes the volume a snapshot of its source."""
        return bool(self.config.get("snap_on_start", False))

    @property
    def save_on_stop(self) -> bool:
        """Whether a stop keeps what the VM wrote."""
        return bool(self.config.get("save_on_stop", False))

    def can_be_ephemeral(self) -> bool:
        """Whether the volume's data may be thrown away at stop with its key: only a
        writable volume that neither keeps its data nor snapshots a source."""
        return self.rw and not self.snap_on_start and not self.save_on_stop

    @property
    def ephemeral(self) -> bool:
        """Whether the volume's data is encrypted with a key lost at stop: its own
        setting, else its pool's ``ephemeral_volatile`` for a volume that can be."""
        if "ephemeral" in self.config:
            return bool(self.config["ephemeral"])
        return self.can_be_ephemeral() and self.pool.ephemeral_volatile

    @ephemeral.setter
    def ephemeral(self, value: bool) -> None:
        if value and not self.can_be_ephemeral():
            raise exc.QubesValueError(
                f"volume {self.vid}: only a writable volume that is neither saved at stop "
                "nor a snapshot can be ephemeral")
        self.config["ephemeral"] = bool(value)

    @property
    def revisions_to_keep(self) -> int:
        """How many older revisions a stop keeps."""
        if "revisions_to_keep" in self.config:
            return parse_int(f"volume {self.vid}: revisions_to_keep",
                             self.config["revisions_to_keep"])
        return self.pool.revisions_to_keep

    @revisions_to_keep.setter
    def revisions_to_keep(self, value: Any) -> None:
        self.config["revisions_to_keep"] = parse_int(
            f"volume {self.vid}: revisions_to_keep", value)

    @property
    def size(self) -> int:
        """Size the VM sees, in bytes (a snapshot is at least its source's size)."""
        size = int(self.config.get("size") or 0)
        if self.snap_on_start and self.source is not None:
            size = max(size, self.source.size)
        return size

    # --- state ------------------------------------------------------------

    def is_dirty(self) -> bool:
        """Whether the volume holds changes not yet committed (the VM runs or crashed)."""
        return False

    def is_outdated(self) -> bool:
        """Whether a snapshot volume's source changed since the volume was started."""
        return False

    def in_use(self) -> bool:
        """Whether a VM runs on the volume (it was started and not yet stopped)."""
        return self.is_dirty()

    def importing(self) -> bool:
        """Whether an import was begun (``import_data``) and not yet ended."""
        return False

    @property
    def revisions(self) -> dict[str, str]:
        """Kept revisions: id -> timestamp, oldest first."""
        return {}

    @property
    def usage(self) -> int:
        """Bytes the volume occupies on disk."""
        return 0

    def block_device(self) -> str | None:
        """Path of the image the VM should use while it runs."""
        return None

    def export_path(self) -> str:
        """Path of the committed image, for a snapshot or a copy (blocking, no lock)."""
        raise StoragePoolException(
            f"volume {self.vid}: pool {self.pool.name} ({self.pool.driver}) cannot export")

    def info(self) -> dict[str, str]:
        """What ``admin.vm.volume.Info`` shows (it asks the filesystem for the usage)."""
        try:
            return self._info()
        except OSError as err:
            raise StoragePoolException(f"volume {self.vid}: info failed: {err}") from err

    def _info(self) -> dict[str, str]:
        def text(value: Any) -> str:
            return "True" if value is True else "False" if value is False else str(value)

        return {
            "pool": self.pool.name, "vid": self.vid, "size": str(self.size),
            "usage": str(self.usage), "rw": text(self.rw),
            "source": self.source.vid if self.source is not None else "",
            "save_on_stop": text(self.save_on_stop),
            "snap_on_start": text(self.snap_on_start),
            "revisions_to_keep": str(self.revisions_to_keep),
            "ephemeral": text(self.ephemeral),
            "is_outdated": text(self.is_outdated()),
        }

    # --- operations -------------------------------------------------------

    async def _run(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run the blocking ``func`` in a thread under the volume's lock.

        An OSError of the filesystem becomes a StoragePoolException naming the
        volume and the operation: a Qubes exception, so the Admin API caller gets
        a reply saying what failed instead of a closed connection.
        """
        async with self.lock:
            try:
                return await asyncio.to_thread(func, *args)
            except OSError as err:
                message = f"volume {self.vid}: {what} failed: {err}"
                log.error("%s", message)
                raise StoragePoolException(message) from err

    async def create(self) -> Volume:
        """Create the volume's files."""
        await self._run("create", self.do_create)
        return self

    async def remove(self) -> None:
        """Remove the volume's files."""
        await self._run("remove", self.do_remove)

    async def start(self) -> Volume:
        """Start the volume for its VM; refused while an import into it is unfinished
        (the VM would run on the old data, and its stop commit over the import)."""
        await self._run("start", self._start_unless_importing)
        return self

    def _start_unless_importing(self) -> None:
        if self.importing():
            raise StoragePoolException(
                f"volume {self.vid}: an import into it is in progress; end it first "
                "(internal.vm.volume.ImportEnd with ok or fail)")
        self.do_start()

    async def stop(self) -> Volume:
        """Stop the volume: keep or drop what the VM wrote."""
        await self._run("stop", self.do_stop)
        return self

    async def abort_start(self) -> None:
        """Undo a start whose VM never ran (another volume failed): nothing to commit."""
        await self._run("abort start", self.do_abort_start)

    async def verify(self) -> bool:
        """Whether the volume can start (its files are there)."""
        return bool(await self._run("verify", self.do_verify))

    async def export(self) -> str:
        """Path of an image to read the volume's committed data from."""
        return str(await self._run("export", self.do_export))

    async def import_data(self, size: int) -> str:
        """Path of an image of ``size`` bytes to write new contents into."""
        size = parse_size(self, size)
        return str(await self._run("import", self.do_import_data, size))

    async def import_data_end(self, success: bool) -> None:
        """Commit (``success``) or discard the data written since ``import_data``.

        A commit is refused while a VM runs on the volume (its stop would commit
        over it); a discard is always possible.
        """
        await self._run("import", self._end_import, bool(success))

    async def import_with(self, size: int, write: Callable[[str], None]) -> None:
        """Replace the contents with an image of ``size`` bytes that ``write(path)``
        (blocking, run in a thread) fills; committed if it returns, discarded if not."""
        path = await self.import_data(size)
        try:
            await asyncio.to_thread(write, path)
        except BaseException:
            await self.import_data_end(False)
            raise
        await self.import_data_end(True)

    def _end_import(self, success: bool) -> None:
        if success and self.in_use():
            raise StoragePoolException(
                f"volume {self.vid} is in use by its running VM: cannot commit an import "
                "into it (end the import with fail, or stop the VM and import again)")
        self.do_import_data_end(success)

    async def import_volume(self, src: Volume) -> Volume:
        """Replace the contents with a copy of ``src``'s committed data."""
        if src is self:
            raise StoragePoolException(f"volume {self.vid}: cannot import a volume into itself")
        path = await src.export()
        await self._run(f"import from {src.vid}", self._import_volume, src, path)
        return self

    def _import_volume(self, src: Volume, path: str) -> None:
        if self.importing():
            raise StoragePoolException(
                f"volume {self.vid}: an import into it is in progress; end it first")
        self.do_import_volume(src, path)

    async def resize(self, size: int) -> None:
        """Grow the volume to ``size`` bytes; the config changes only once that worked."""
        size = parse_size(self, size)
        await self._run("resize", self.do_resize, size)

    async def revert(self, revision: str | None = None) -> Volume:
        """Go back to ``revision`` (the newest when None)."""
        await self._run("revert", self.do_revert, revision)
        return self

    # --- driver hooks (blocking, called with the lock held, in a thread) ---

    def _unsupported(self, what: str) -> NoReturn:
        raise StoragePoolException(
            f"volume {self.vid}: pool {self.pool.name} ({self.pool.driver}) cannot {what}")

    def do_create(self) -> None:
        """Create the files (blocking; the driver's work)."""
        self._unsupported("create volumes")

    def do_remove(self) -> None:
        """Remove the files (blocking)."""
        self._unsupported("remove volumes")

    def do_start(self) -> None:
        """Prepare the files for a start (blocking)."""
        self._unsupported("start volumes")

    def do_stop(self) -> None:
        """Commit or drop the files at a stop (blocking)."""
        self._unsupported("stop volumes")

    def do_abort_start(self) -> None:
        """Undo a start that failed half-way (blocking)."""
        self.do_stop()

    def do_verify(self) -> bool:
        """Whether the files needed for a start are there (blocking)."""
        return True

    def do_export(self) -> str:
        """A path from which the volume's data can be read."""
        return self.export_path()

    def do_import_data(self, size: int) -> str:
        """Begin an import of ``size`` bytes; the path to write them to."""
        return self._unsupported("import data")

    def do_import_data_end(self, success: bool) -> None:
        """Finish an import: take the data, or drop it."""
        self._unsupported("import data")

    def do_import_volume(self, src: Volume, path: str) -> None:
        """Take the data of ``src`` (exported at ``path``)."""
        self._unsupported("import volumes")

    def do_resize(self, size: int) -> None:
        """Grow the volume to ``size`` bytes."""
        self._unsupported("resize volumes")

    def do_revert(self, revision: str | None) -> None:
        """Go back to ``revision`` (blocking)."""
        self._unsupported("revert volumes")


@functools.cache
def pool_drivers() -> dict[str, type[Pool]]:
    """Storage drivers by name: the built-in ones, then those of installed plugins."""
    return load_plugins(STORAGE_GROUP)


def make_pool(name: str, driver: str, **config: Any) -> Pool:
    """Instantiate a pool of ``driver``; an unknown driver gives an unusable placeholder."""
    cls = pool_drivers().get(driver)
    if cls is None:
        log.warning("pool %s: storage driver %r is not installed; the pool is unavailable",
                    name, driver)
        return UnavailablePool(name, driver, **config)
    return cls(name=name, **config)


def check_pool_name(name: Any) -> str:
    """A new pool's name: ASCII letters, digits, ``_`` and ``-``, at most 64, a letter
    or digit first (a name the wire and qubes.xml carry as it is)."""
    if not isinstance(name, str) or not POOL_NAME_RE.fullmatch(name):
        shown = repr(name[:40]) + "..." if isinstance(name, str) and len(name) > 40 else repr(
            name)
        raise exc.QubesValueError(
            f"invalid pool name {shown}: use up to 64 ASCII letters, digits, '_' and '-', "
            "a letter or digit first")
    return name


def __getattr__(name: str) -> Any:
    if name == "Storage":  # imported late: it builds on the classes above
        from qubes_core.storage.vmstorage import Storage

        return Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
