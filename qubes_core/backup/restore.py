"""Reading a backup of format 4 back: :func:`read_backup` authenticates and unpacks
it, :func:`restore_backup` recreates its VMs in a model.

Invariant: nothing from a backup is used before it is authenticated. The header
counts only if its sealed copy (``backup-header.hmac``) decrypts to the same
bytes; every part must decrypt with the passphrase bound to its own name and the
backup's id (so parts cannot be swapped, dropped from the middle or taken from
another backup) and the parts of a file must be numbered without a gap. The
archive's member names are checked against the layout before anything is read.
A VM is restored whole or not at all: one whose creation or data import fails is
removed again, and the error names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubes_core import exc, fsutil
from qubes_core.backup import COMPRESSION_FILTERS, HEADER_FILENAME, VM_FILES, scrypt
from qubes_core.storage import fileops
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM

log = logging.getLogger("qubes.backup")

PART_RE = re.compile(r"^(qubes\.xml|vm[0-9]{1,9}/[A-Za-z0-9_-]{1,64}(\.img|\.xml|\.txt))"
                     r"\.([0-9]{3})\.enc$")
MAX_HEADER = 4096
# Never carried over: the identity of the VM in the backed-up system, and what the
# creation itself sets.
NOT_RESTORED = {"qid", "uuid", "name", "label", "template", "dispid", "xid",
                "backup_timestamp"}


@dataclass
class BackupContent:
    """An unpacked backup: its header, its qubes.xml, and each file it holds."""

    header: dict[str, str]
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def qubes_xml(self) -> Path:
        return self.files["qubes.xml"]


def parse_header(data: bytes) -> dict[str, str]:
    """The ``key=value`` lines of a backup header, checked for what is read here."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise exc.QubesException("backup header is not ASCII: not a Qubes backup") from None
    header = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            raise exc.QubesException(f"backup header: invalid line {line[:60]!r}")
        header[key] = value
    if header.get("version") != "4":
        raise exc.QubesException(
            f"backup format version {header.get('version', '?')!r} is not supported (only 4)")
    if header.get("encrypted") != "True" or header.get("hmac-algorithm") != "scrypt":
        raise exc.QubesException("only encrypted backups (scrypt) are supported")
    if (header.get("compressed") == "True"
            and header.get("compression-filter", "gzip") not in COMPRESSION_FILTERS):
        raise exc.QubesException(
            f"backup compression filter {header.get('compression-filter')!r} is not "
            f"one of {', '.join(COMPRESSION_FILTERS)}")
    if not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", header.get("backup-id", "")):
        raise exc.QubesException("backup header: missing or invalid backup-id")
    return header


def read_backup(path: Path, passphrase: bytes, work: Path) -> BackupContent:
    """Authenticate and unpack the backup at ``path`` into ``work`` (blocking)."""
    try:
        archive = tarfile.open(path, mode="r:")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as error:
        raise exc.QubesException(f"{path} is not a backup archive: {error}") from None
    with archive:
        members = archive.getmembers()
        if len(members) < 3 or [m.name for m in members[:2]] != [
                HEADER_FILENAME, HEADER_FILENAME + ".hmac"]:
            raise exc.QubesException(f"{path} is not a Qubes backup (no backup-header)")
        raw_header = _member_bytes(archive, members[0], MAX_HEADER)
        sealed = _member_bytes(archive, members[1], MAX_HEADER + 256)
        try:
            opened = scrypt.decrypt_bytes(sealed, f"{HEADER_FILENAME}!".encode() + passphrase,
                                          "backup header")
        except scrypt.ScryptError as error:
            raise exc.QubesException(f"{path}: {error}") from None
        if opened != raw_header:
            raise exc.QubesException(f"{path}: the backup header was altered")
        header = parse_header(raw_header)
        content = BackupContent(header, work)
        streams = work / "streams"
        streams.mkdir()
        expected: dict[str, int] = {}
        for member in members[2:]:
            match = PART_RE.match(member.name)
            if match is None or not member.isfile():
                raise exc.QubesException(
                    f"{path}: unexpected member {member.name[:80]!r} in the backup")
            name, number = match.group(1), int(match.group(3))
            if number != expected.get(name, 0):
                raise exc.QubesException(f"{path}: part {number} of {name} out of order "
                                         "(a part is missing or repeated)")
            expected[name] = number + 1
            stream = streams / name.replace("/", "_")
            source = archive.extractfile(member)
            assert source is not None
            with open(stream, "ab") as target:
                try:
                    scrypt.decrypt(source, member.size, target,
                                   f"{header['backup-id']}!{member.name[:-4]}!".encode()
                                   + passphrase, member.name)
                except scrypt.ScryptError as error:
                    raise exc.QubesException(f"{path}: {error}") from None
        if "qubes.xml" not in expected:
            raise exc.QubesException(f"{path}: the backup holds no qubes.xml")
    extracted = work / "files"
    extracted.mkdir()
    for name in expected:
        _untar(streams / name.replace("/", "_"), extracted, header, name)
        content.files[name] = extracted / name
        (streams / name.replace("/", "_")).unlink()
    return content


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isfile() or member.size > limit:
        raise exc.QubesException(f"backup member {member.name} is not a small file")
    source = archive.extractfile(member)
    assert source is not None
    return source.read()


def _untar(stream: Path, directory: Path, header: dict[str, str], name: str) -> None:
    """Unpack the authenticated inner tar of ``name``; it must hold exactly that file."""
    command = ["tar", "-x", "--sparse", "--no-same-owner", "--no-same-permissions",
               "-C", str(directory), "-f", str(stream)]
    if header.get("compressed") == "True":
        command.insert(2, f"--use-compress-program={header.get('compression-filter', 'gzip')}")
    listing = subprocess.run([*command[:1], "-t", *command[2:]], capture_output=True)
    names = listing.stdout.decode(errors="replace").splitlines()
    if listing.returncode or names != [name]:
        raise exc.QubesException(f"backup: the archive of {name} holds {names[:3]} "
                                 f"({listing.stderr.decode(errors='replace').strip()[:200]})")
    result = subprocess.run(command, capture_output=True)
    if result.returncode:
        raise exc.QubesException(f"backup: unpacking {name} failed: "
                                 f"{result.stderr.decode(errors='replace').strip()[:200]}")


@dataclass
class RestoreResult:
    """What :func:`restore_backup` did: VMs restored, and VMs skipped with why."""

    restored: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _restore_order(vms: list[Any]) -> list[Any]:
    """Templates first, then VMs that need no template, then the rest (a DispVM after
    the AppVM it is made from)."""
    rank = {"TemplateVM": 0, "StandaloneVM": 1, "AppVM": 2, "DispVM": 3}
    return sorted(vms, key=lambda vm: (rank.get(type(vm).__name__, 2), vm.name))


async def restore_backup(app: Qubes, path: Path, passphrase: bytes,
                         names: list[str] | None = None) -> RestoreResult:
    """Recreate the VMs of the backup at ``path`` (those in ``names``, or all) in
    ``app``: class, label, template, the properties set, features, tags, firewall,
    notes and the data of each volume saved at stop. A VM whose name is taken, or
    whose template is neither in ``app`` nor in the backup, is skipped with the
    reason. ``app`` is saved at the end."""
    from qubes_core.app import Qubes

    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="qubes-restore-"))
    result = RestoreResult()
    try:
        content = await asyncio.to_thread(read_backup, path, passphrase, work)
        backup_app = Qubes(content.qubes_xml, lock=False)
        try:
            chosen = [vm for vm in backup_app.domains
                      if vm.features.get("backup-content") == "True"
                      and (names is None or vm.name in names)]
            created = []
            for bvm in _restore_order(chosen):
                reason = _why_not(app, bvm)
                if reason:
                    result.skipped[bvm.name] = reason
                    continue
                vm = await _restore_vm(app, bvm, content)
                created.append((vm, bvm))
                result.restored.append(vm.name)
            for vm, bvm in created:  # references to VMs restored after them
                _copy_properties(vm, bvm, references=True)
        finally:
            backup_app.close()
        app.save()
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return result


def _why_not(app: Qubes, bvm: BaseVM) -> str:
    if bvm.name in app.domains:
        return f"a VM named {bvm.name!r} exists already"
    if not isinstance(bvm, QubesVM):
        return f"{bvm.name!r} is not a VM that runs"
    template = bvm.template
    if template is not None and template.name not in app.domains:
        return f"its template {template.name!r} is neither installed nor restored"
    return ""


def _copy_properties(vm: BaseVM, bvm: BaseVM, references: bool) -> None:
    """Set on ``vm`` each property set on ``bvm``: those naming VMs only with
    ``references`` (by name; one naming a VM that is not here is left at its default)."""
    for prop in bvm.property_list():
        name = prop.__name__
        if name in NOT_RESTORED or not prop.persisted or not bvm.property_is_set(name):
            continue
        if (prop.api_type == "vm") != references:
            continue
        text = bvm.property_get_text(name)
        try:
            setattr(vm, name, text)
        except (exc.QubesException, AttributeError) as error:
            log.warning("restore of %s: property %s=%r not restored: %s", vm, name, text,
                        error)


async def _restore_vm(app: Qubes, bvm: QubesVM, content: BackupContent) -> QubesVM:
    subdir = bvm.features["backup-path"]
    kwargs: dict[str, Any] = {"name": bvm.name, "label": bvm.label.name}
    template = bvm.template
    if template is not None:
        kwargs["template"] = app.domains[template.name]
    vm = app.add_new_vm(type(bvm), **kwargs)
    try:
        _copy_properties(vm, bvm, references=False)
        for key, value in bvm.features.items():
            if not key.startswith("backup-"):
                vm.features[key] = value
        for tag in bvm.tags:
            vm.tags.add(tag)
        images = {}
        for name in vm.volume_config:
            image = content.files.get(f"{subdir}{name}.img")
            if image is not None:
                images[name] = image
                vm.volume_config[name]["size"] = os.stat(image).st_size
        await vm.create_on_disk()
        for name, image in images.items():
            await vm.volumes[name].import_with(
                os.stat(image).st_size, functools.partial(_copy_image, image))
        for name in VM_FILES:
            source = content.files.get(subdir + name)
            if source is not None:
                await asyncio.to_thread(_copy_vm_file, source, Path(vm.dir_path) / name)
    except BaseException:
        log.error("restore of %s failed; removing what was made of it", bvm.name)
        with contextlib.suppress(Exception):
            await vm.remove_from_disk()
        with contextlib.suppress(Exception):
            del app.domains[vm.name]
        raise
    log.info("restored %s from backup %s", vm.name, content.header["backup-id"])
    return vm


def _copy_image(source: Path, target: str) -> None:
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_WRONLY)
        try:
            os.ftruncate(dst, 0)
            fileops.sparse_copy_fd(src, dst)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_vm_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(target, source.read_bytes(), mode=0o644)
