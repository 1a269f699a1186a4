"""Pool and volume methods: ``admin.pool.*`` (global) and ``admin.vm.volume.*`` (local).

Payloads are untrusted: each is parsed in full and checked before anything
changes, and a refusal names what was wrong. Methods that replace a volume's
contents (Revert, Import, CloneTo, Set.rw) need the VM halted.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from typing import Any

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.api.untrusted import decode_text
from qubes_core.properties import bool_type
from qubes_core.storage import Volume, pool_drivers

OPTION_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
REVISION_RE = re.compile(r"^[0-9]{1,18}$")
MAX_OPTION_VALUE = 4096
# CloneFrom tokens: token -> (vm, volume name); a token is used once.
_clone_tokens: dict[str, tuple[Any, str]] = {}
MAX_CLONE_TOKENS = 256


def _lines(mapping: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in sorted(mapping.items()))


def _pool(call: ApiCall) -> Any:
    name = call.require_arg("a pool name")
    pool = call.app.pools.get(name)
    if pool is None:
        raise exc.QubesValueError(f"no such pool: {name!r}")
    return pool


def _volume(call: ApiCall) -> Volume:
    call.require_not_dom0()
    name = call.require_arg("a volume name")
    volumes = call.dest.volumes
    if name not in volumes:
        raise exc.QubesValueError(
            f"{call.dest} has no volume {name!r} (volumes: {', '.join(sorted(volumes))})")
    return volumes[name]


def _require_halted(call: ApiCall, what: str) -> None:
    if not call.dest.is_halted():
        raise exc.QubesVMNotHaltedError(
            call.dest, f"cannot {what} a volume of {call.dest} while it runs")


def _payload_bool(call: ApiCall, what: str) -> bool:
    text = call.payload_text(what, ascii_only=True).strip()
    try:
        return bool_type(text)
    except ValueError as error:
        raise exc.QubesValueError(f"{what}: {error}") from None


def _payload_int(call: ApiCall, what: str) -> int:
    text = call.payload_text(what, ascii_only=True).strip()
    if not text.isdigit() or len(text) > 20:
        raise exc.QubesValueError(f"{what}: expected a non-negative integer, got {text!r}")
    return int(text)


# --- pools -----------------------------------------------------------------------


@method("admin.pool.List", scope="global", read=True, dest="adminvm")
async def pool_list(call: ApiCall) -> str:
    """The names of the storage pools the caller may see."""
    return "".join(name + "\n" for name in call.filter(sorted(call.app.pools)))


@method("admin.pool.ListDrivers", scope="global", read=True, dest="adminvm")
async def pool_list_drivers(call: ApiCall) -> str:
    """Each storage driver with the pool options it takes, so a client can build ``pool.Add``."""
    lines = []
    for name, cls in sorted(pool_drivers().items()):
        lines.append(" ".join([name, *sorted(cls.known_options)]) + "\n")
    return "".join(lines)


@method("admin.pool.Info", scope="global", read=True, argument=True, dest="adminvm")
async def pool_info(call: ApiCall) -> str:
    """A pool's driver, options, size and usage, as ``key=value`` lines."""
    pool = _pool(call)
    info = await asyncio.to_thread(pool.info)  # size and usage ask the filesystem
    return _lines(info)


def parse_pool_options(raw: bytes) -> dict[str, str]:
    """``key=value`` lines into a dict: plain keys, no key twice, short single-line values."""
    options: dict[str, str] = {}
    for number, raw_line in enumerate(raw.split(b"\n"), 1):
        line = decode_text(raw_line, f"pool options, line {number}")
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not OPTION_KEY_RE.match(key):
            raise exc.QubesValueError(f"pool options, line {number}: expected key=value "
                                      f"with a lower-case key, got {line[:80]!r}")
        if key in options:
            raise exc.QubesValueError(f"pool options: {key!r} given twice")
        if len(value) > MAX_OPTION_VALUE:
            raise exc.QubesValueError(f"pool options: the value of {key!r} is too long")
        options[key] = value
    return options


@method("admin.pool.Add", scope="global", write=True, argument=True, payload=True,
        dest="adminvm", max_payload=16384)
async def pool_add(call: ApiCall) -> None:
    """Add a pool of the driver named in the argument; the driver sets it up or refuses."""
    driver = call.require_arg("a storage driver")
    drivers = pool_drivers()
    if driver not in drivers:
        raise exc.QubesValueError(
            f"no such storage driver: {driver!r} (known: {', '.join(sorted(drivers))})")
    options = parse_pool_options(call.payload)
    name = options.pop("name", "")
    if not name:
        raise exc.QubesValueError("pool options: name= is missing")
    # Sets the pool up (directory, reflink probe: a few small writes) in a worker
    # thread, or refuses.
    await call.app.add_pool_async(name, driver, **options)


@method("admin.pool.Remove", scope="global", write=True, argument=True, dest="adminvm")
async def pool_remove(call: ApiCall) -> None:
    """Checks first, then the pool's own teardown, and only then the model: a pool
    whose teardown fails stays, as it was."""
    pool = _pool(call)
    users = sorted({vm.name for vm in call.app.domains
                    for volume in vm.volume_config.values()
                    if volume.get("pool") == pool.name})
    if users:
        raise exc.QubesPoolInUseError(f"pool {pool.name!r} is used by: {', '.join(users)}")
    try:
        await asyncio.to_thread(pool.destroy)
    except OSError as error:
        raise exc.StoragePoolException(f"cannot remove pool {pool.name!r}: {error}") from None
    call.app.remove_pool(pool.name)


@method("admin.pool.Set.revisions_to_keep", scope="global", write=True, argument=True,
        payload=True, dest="adminvm", max_payload=32)
async def pool_set_revisions(call: ApiCall) -> None:
    """How many old revisions the pool's volumes keep, unless a volume sets its own."""
    pool = _pool(call)
    pool.revisions_to_keep = _payload_int(call, "revisions_to_keep")


@method("admin.pool.Set.ephemeral_volatile", scope="global", write=True, argument=True,
        payload=True, dest="adminvm", max_payload=16)
async def pool_set_ephemeral_volatile(call: ApiCall) -> None:
    """Whether the pool's volatile volumes are encrypted with a key lost at stop, unless a
    volume sets its own ``ephemeral``."""
    pool = _pool(call)
    pool.ephemeral_volatile = _payload_bool(call, "ephemeral_volatile")


@method("admin.pool.UsageDetails", scope="global", read=True, argument=True, dest="adminvm")
async def pool_usage_details(call: ApiCall) -> str:
    """The pool's ``data_size`` and ``data_usage`` in bytes, as ``key=value`` lines."""
    pool = _pool(call)
    return _lines(await asyncio.to_thread(pool.usage_details))


@method("admin.pool.volume.List", scope="global", read=True, argument=True, dest="adminvm")
async def pool_volume_list(call: ApiCall) -> str:
    """The ids of the volumes in the pool, one a line."""
    pool = _pool(call)
    return "".join(vid + "\n" for vid in pool.volume_ids(call.app))


# --- volumes ---------------------------------------------------------------------


@method("admin.vm.volume.List", scope="local", read=True)
async def volume_list(call: ApiCall) -> str:
    """The names of the VM's volumes (none for dom0)."""
    if call.dest.qid == 0:
        return ""
    return "".join(name + "\n" for name in sorted(call.dest.volumes))


@method("admin.vm.volume.Info", scope="local", read=True, argument=True)
async def volume_info(call: ApiCall) -> str:
    """A volume's pool, size, usage, flags and source, as ``key=value`` lines."""
    volume = _volume(call)
    info = await asyncio.to_thread(volume.info)
    return _lines(info)


@method("admin.vm.volume.ListSnapshots", scope="local", read=True, argument=True)
async def volume_list_snapshots(call: ApiCall) -> str:
    """The revisions a volume keeps: what ``Revert`` can go back to."""
    volume = _volume(call)
    return "".join(revision + "\n" for revision in volume.revisions)


@method("admin.vm.volume.Revert", scope="local", write=True, argument=True, payload=True,
        max_payload=64)
async def volume_revert(call: ApiCall) -> None:
    """Bring a halted VM's volume back to a kept revision (the newest one if none is named)."""
    volume = _volume(call)
    revision = call.payload_text("revision", ascii_only=True).strip()
    if revision and not REVISION_RE.match(revision):
        raise exc.QubesValueError(f"invalid revision {revision[:40]!r}")
    if revision and revision not in volume.revisions:
        raise exc.QubesValueError(
            f"volume {volume.name} of {call.dest} has no revision {revision!r}")
    _require_halted(call, "revert")
    await volume.revert(revision or None)


@method("admin.vm.volume.Resize", scope="local", write=True, argument=True, payload=True,
        max_payload=32)
async def volume_resize(call: ApiCall) -> None:
    """Grow a volume to the size given in bytes, even while the VM runs; no driver shrinks one."""
    volume = _volume(call)
    await volume.resize(_payload_int(call, "size"))


@method("admin.vm.volume.Set.revisions_to_keep", scope="local", write=True, argument=True,
        payload=True, max_payload=32)
async def volume_set_revisions(call: ApiCall) -> None:
    """How many old revisions this volume keeps, overriding its pool's setting."""
    volume = _volume(call)
    volume.revisions_to_keep = _payload_int(call, "revisions_to_keep")


@method("admin.vm.volume.Set.rw", scope="local", write=True, argument=True, payload=True,
        max_payload=16)
async def volume_set_rw(call: ApiCall) -> None:
    """Whether the VM may write to the volume; changed only while the VM is halted."""
    volume = _volume(call)
    value = _payload_bool(call, "rw")
    _require_halted(call, "change rw of")
    volume.rw = value


@method("admin.vm.volume.Set.ephemeral", scope="local", write=True, argument=True,
        payload=True, max_payload=16)
async def volume_set_ephemeral(call: ApiCall) -> None:
    """Whether the volume is encrypted with a key lost at stop (volatile volumes only);
    changed only while the VM is halted."""
    volume = _volume(call)
    value = _payload_bool(call, "ephemeral")
    _require_halted(call, "change ephemeral of")
    volume.ephemeral = value


@method("admin.vm.volume.Clear", scope="local", write=True, argument=True)
async def volume_clear(call: ApiCall) -> None:
    """Replace a halted VM's volume with zeros of the same size (a new revision)."""
    volume = _volume(call)
    _require_halted(call, "clear")
    await volume.import_data(volume.size)
    await volume.import_data_end(True)


@method("admin.vm.volume.CloneFrom", scope="local", write=True, argument=True)
async def volume_clone_from(call: ApiCall) -> str:
    """A one-time token that ``CloneTo`` exchanges for a copy of this volume.

    Classified as a write (as in the reference): the token hands out the volume's
    data, so a caller allowed only to read a VM's settings must not get one.
    """
    volume = _volume(call)
    if len(_clone_tokens) >= MAX_CLONE_TOKENS:
        _clone_tokens.pop(next(iter(_clone_tokens)))
    token = secrets.token_hex(32)
    _clone_tokens[token] = (call.dest, volume.name)
    return token


@method("admin.vm.volume.CloneTo", scope="local", write=True, argument=True, payload=True,
        max_payload=128, own_write_lock=True)
async def volume_clone_to(call: ApiCall) -> None:
    """Replace a halted VM's volume with a copy of the token's volume.

    The copy runs under the two volumes' own locks, not the server's write lock:
    other writers go on meanwhile. The volume's start waits for it; a removal of
    the VM removes the copy once it is done. Only the end (the volume's size in
    qubes.xml) is a change of the model, saved before the reply.
    """
    volume = _volume(call)
    token = call.payload_text("clone token", ascii_only=True).strip()
    if token not in _clone_tokens:
        raise exc.QubesValueError("invalid or already used clone token")
    _require_halted(call, "clone into")
    src_vm, src_name = _clone_tokens.pop(token)
    if call.app.domains.get(src_vm.qid) is not src_vm or src_name not in src_vm.volumes:
        raise exc.QubesValueError("the volume of this clone token is gone")
    await volume.import_volume(src_vm.volumes[src_name])
    async with call.model_change():
        if call.app.domains.get(call.dest.qid) is not call.dest:
            raise exc.QubesVMNotFoundError(
                call.dest.name, f"{call.dest} was removed while its volume {volume.name} "
                                "was being cloned into")


@method("admin.vm.volume.Import", scope="local", write=True, argument=True, payload=True)
async def volume_import(call: ApiCall) -> None:
    """New contents for a halted VM's volume: the payload is the whole image.

    A request holds at most 64 KiB; larger images are written by dom0 tools
    between ``internal.vm.volume.ImportBegin`` and ``ImportEnd``.
    """
    volume = _volume(call)
    _require_halted(call, "import into")
    await _import_image(volume, max(volume.size, len(call.payload)), call.payload)


@method("admin.vm.volume.ImportWithSize", scope="local", write=True, argument=True,
        payload=True)
async def volume_import_with_size(call: ApiCall) -> None:
    """New contents of a given size for a halted VM's volume: the payload is the size
    in bytes, a newline, then the data (at most that long; the rest reads as zeros).
    The volume takes that size, smaller or larger than before."""
    volume = _volume(call)
    head, newline, data = call.payload.partition(b"\n")
    size_text = head.decode("ascii", "replace")
    if not newline or not size_text.isdigit() or len(size_text) > 20:
        raise exc.QubesValueError(
            f"ImportWithSize: the payload must start with the size in bytes and a newline, "
            f"got {size_text[:24]!r}")
    size = int(size_text)
    if len(data) > size:
        raise exc.QubesValueError(
            f"ImportWithSize: {len(data)} bytes of data do not fit the size given ({size})")
    _require_halted(call, "import into")
    await _import_image(volume, size, data)


async def _import_image(volume: Volume, size: int, data: bytes) -> None:
    """Write ``data`` at the start of a new image of ``size`` bytes and commit it."""
    await volume.import_with(size, lambda path: _write_image(path, data))


def _write_image(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@method("internal.vm.volume.ImportBegin", scope="local", write=True, argument=True,
        payload=True, max_payload=32)
async def volume_import_begin(call: ApiCall) -> str:
    """Start an import of ``size`` bytes; the reply is the image path to write."""
    volume = _volume(call)
    _require_halted(call, "import into")
    return await volume.import_data(_payload_int(call, "size"))


@method("internal.vm.volume.ImportEnd", scope="local", write=True, argument=True,
        payload=True, max_payload=16)
async def volume_import_end(call: ApiCall) -> None:
    """Commit (``ok``) or discard (``fail``) what a dom0 tool wrote since ``ImportBegin``."""
    volume = _volume(call)
    result = call.payload_text("import result", ascii_only=True).strip()
    if result not in ("ok", "fail"):
        raise exc.QubesValueError(f"import result must be ok or fail, not {result[:20]!r}")
    if result == "ok":
        _require_halted(call, "commit an import into")
    await volume.import_data_end(result == "ok")
