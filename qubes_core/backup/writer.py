"""Writing a backup (format 4, see :mod:`qubes_core.backup`) to a file in dom0.

Invariant: a backup file exists under its final name only when it is complete.
It is written as ``NAME~partial`` next to its final place, fsynced and renamed;
a failure or a cancel removes the partial file and the work directory. The
model is read in the event loop (a snapshot of qubes.xml and the paths of the
committed volume images, under the volumes' locks); the slow part (tar,
compression, encryption) runs in a worker thread and touches no model object.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lxml import etree

from qubes_core import exc, fsutil
from qubes_core.backup import (
    CHUNK_SIZE,
    FORMAT_VERSION,
    HEADER_FILENAME,
    VM_FILES,
    scrypt,
)
from qubes_core.backup.profile import BackupProfile, selected_vms
from qubes_core.store import serialize

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.vm.qubesvm import QubesVM

log = logging.getLogger("qubes.backup")


@dataclass
class VMContent:
    """One VM's share of a backup: its directory in the archive and its files."""

    vm: QubesVM
    subdir: str
    # name in the archive (below subdir) -> path on disk
    files: dict[str, str] = field(default_factory=dict)
    size: int = 0


def _usage(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


async def plan(app: Qubes, profile: BackupProfile) -> list[VMContent]:
    """What the profile's backup holds, per VM: the committed image of each volume
    saved at stop (taken under the volume's lock), and the VM's own files."""
    contents = []
    for vm in selected_vms(app, profile):
        content = VMContent(vm, f"vm{vm.qid}/")
        for name, volume in sorted(vm.volumes.items()):
            if not volume.save_on_stop:
                continue
            path = await volume.export()
            content.files[f"{name}.img"] = path
            content.size += _usage(path)
        for name in VM_FILES:
            own_file = Path(vm.dir_path) / name
            if own_file.is_file():
                content.files[name] = str(own_file)
                content.size += _usage(str(own_file))
        contents.append(content)
    return contents


def summary(app: Qubes, contents: list[VMContent]) -> str:
    """The table ``admin.backup.Info`` shows (as Qubes': VM, type, size; then the
    VMs left out)."""
    rows = [(content.vm.name, type(content.vm).__name__, content.size)
            for content in contents]
    width = max([len("VM name")] + [len(row[0]) for row in rows]) + 1
    lines = [f"{'VM name':<{width}}| {'VM type':<14}| VM size", "-" * (width + 28)]
    lines += [f"{name:<{width}}| {klass:<14}| {_human(size)}" for name, klass, size in rows]
    lines.append("-" * (width + 28))
    lines.append(f"{'Total size:':<{width + 16}}| {_human(sum(row[2] for row in rows))}")
    chosen = {content.vm.name for content in contents}
    left_out = sorted(vm.name for vm in app.domains if vm.name not in chosen)
    lines.append("VMs not selected for backup:")
    lines += [f" - {name}" for name in left_out]
    return "\n".join(lines) + "\n"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def qubes_xml_for_backup(app: Qubes, contents: list[VMContent]) -> bytes:
    """The model's qubes.xml, each backed-up VM marked with the ``backup-*`` features
    a restore looks for."""
    root = etree.fromstring(serialize(app))
    by_name = {content.vm.name: content for content in contents}
    for domain in root.iterfind("domains/domain"):
        name = domain.findtext("properties/property[@name='name']")
        content = by_name.get(name or "")
        if content is None:
            continue
        features = domain.find("features")
        if features is None:
            features = etree.SubElement(domain, "features")
        for key, value in (("backup-content", "True"), ("backup-path", content.subdir),
                           ("backup-size", str(content.size))):
            for old in features.findall(f"feature[@name='{key}']"):
                features.remove(old)
            etree.SubElement(features, "feature", name=key).text = value
    return etree.tostring(root, encoding="utf-8", xml_declaration=True, pretty_print=True)


def target_path(destination: str) -> Path:
    """The backup file for ``destination_path``: a new ``qubes-DATE`` file in it if it
    is a directory, else the path itself (its directory must exist)."""
    path = Path(destination)
    if not path.is_absolute():
        raise exc.QubesException(f"backup destination {destination!r} is not an absolute path")
    if path.is_dir():
        return path / time.strftime("qubes-%Y-%m-%dT%H%M%S")
    if not path.parent.is_dir():
        raise exc.QubesException(f"backup destination {destination!r}: no such directory "
                                 f"{path.parent}")
    if path.exists():
        raise exc.QubesException(f"backup destination {destination!r} exists already")
    return path


class BackupWriter:
    """One backup run: :meth:`write` (blocking) writes the archive to ``target``."""

    def __init__(self, target: Path, passphrase: bytes, compression: str | None,
                 qubes_xml: bytes, contents: list[VMContent],
                 progress: Callable[[int], None] | None = None,
                 log_n: int | None = None):
        self.target = target
        self.passphrase = passphrase
        self.compression = compression
        self.qubes_xml = qubes_xml
        self.contents = contents
        self.progress = progress
        self.log_n = log_n
        self.cancelled = threading.Event()
        self.backup_id = time.strftime("%Y%m%dT%H%M%S-") + secrets.token_hex(4)
        self._total = max(1, sum(content.size for content in contents))
        self._done = 0

    def header(self) -> bytes:
        lines = [f"version={FORMAT_VERSION}", "encrypted=True",
                 f"compressed={self.compression is not None}"]
        if self.compression is not None:
            lines.append(f"compression-filter={self.compression}")
        lines += ["hmac-algorithm=scrypt", "crypto-algorithm=scrypt",
                  f"backup-id={self.backup_id}"]
        return ("\n".join(lines) + "\n").encode("ascii")

    def write(self) -> None:
        partial = self.target.with_name(self.target.name + "~partial")
        work = Path(tempfile.mkdtemp(prefix="qubes-backup-"))
        try:
            with open(partial, "xb") as out:
                with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                    header = self.header()
                    self._add_bytes(archive, HEADER_FILENAME, header)
                    sealed = io.BytesIO()
                    scrypt.encrypt(io.BytesIO(header), sealed,
                                   f"{HEADER_FILENAME}!".encode() + self.passphrase,
                                   log_n=self.log_n)
                    self._add_bytes(archive, HEADER_FILENAME + ".hmac", sealed.getvalue())
                    (work / "qubes.xml").write_bytes(self.qubes_xml)
                    self._add_file(archive, work, "", "qubes.xml")
                    for content in self.contents:
                        (work / content.subdir).mkdir()
                        for name, path in content.files.items():
                            os.symlink(path, work / content.subdir / name)
                            self._add_file(archive, work, content.subdir, name)
                out.flush()
                os.fsync(out.fileno())
            os.rename(partial, self.target)
            fsutil.fsync_dir(self.target.parent)
            if self.progress is not None:
                self.progress(100)
            log.info("backup %s written to %s (%d VMs)", self.backup_id, self.target,
                     len(self.contents))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _check_cancel(self) -> None:
        if self.cancelled.is_set():
            raise exc.BackupCancelledError("backup cancelled")

    @staticmethod
    def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(time.time())
        info.mode = 0o600
        archive.addfile(info, io.BytesIO(data))

    def _add_file(self, archive: tarfile.TarFile, work: Path, subdir: str, name: str) -> None:
        """The file ``subdir + name`` of the work directory as a (compressed) tar, cut
        into encrypted parts ``subdir/name.NNN.enc``."""
        command = ["tar", "-c", "--sparse", "--dereference", "--format=gnu", "-C", str(work)]
        if self.compression is not None:
            command.append(f"--use-compress-program={self.compression}")
        command.append(subdir + name)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        try:
            number = 0
            while True:
                self._check_cancel()
                part = f"{subdir}{name}.{number:03d}"
                with tempfile.TemporaryFile(dir=work) as sealed:
                    taken = scrypt.encrypt(
                        _Counting(process.stdout, self), sealed,
                        f"{self.backup_id}!{part}!".encode() + self.passphrase,
                        limit=CHUNK_SIZE, log_n=self.log_n)
                    if not taken:
                        break
                    info = tarfile.TarInfo(part + ".enc")
                    info.size = sealed.tell()
                    info.mtime = int(time.time())
                    info.mode = 0o600
                    sealed.seek(0)
                    archive.addfile(info, sealed)
                number += 1
        finally:
            process.stdout.close()
            stderr = process.stderr.read() if process.stderr else b""
            if process.wait() and not self.cancelled.is_set():
                raise exc.QubesException(
                    f"backup: archiving {subdir}{name} failed: "
                    f"{stderr.decode(errors='replace').strip()[:300]}")


class _Counting:
    """Reads from the tar process, counting bytes for the progress and stopping at a
    cancel."""

    def __init__(self, stream: IO[bytes], writer: BackupWriter):
        self.stream = stream
        self.writer = writer

    def read(self, size: int = -1, /) -> bytes:
        self.writer._check_cancel()
        data = self.stream.read(size)
        self.writer._done += len(data)
        if self.writer.progress is not None:
            self.writer.progress(min(100, self.writer._done * 100 // self.writer._total))
        return data
