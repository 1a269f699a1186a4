"""Backups through the Admin API (``admin.backup.*``) and restored again: VMs come back
with their volumes' data, properties, features, tags, firewall and notes; the
archive is Qubes' format 4 (the ``scrypt`` tool opens its parts); a damaged
backup or a wrong passphrase restores nothing; a bad profile writes nothing.

The model runs on libvirt's test driver with file-reflink volumes in tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.backup import restore as restore_module
from qubes_core.backup import scrypt
from qubes_core.backup.restore import restore_backup
from tests.requirements import require_tool
from tests.unit.runtime.support import runtime  # noqa: F401

from .conftest import Harness

PASSPHRASE = "correct horse"
MiB = 1024**2


@pytest.fixture(autouse=True)
def cheap_key_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt at 2**12 instead of 2**17 per part: the same format, a fraction of the time."""
    monkeypatch.setattr(scrypt, "DEFAULT_LOG_N", 12)


@pytest.fixture
async def api(basic_app: Any, runtime: Any, tmp_path: Path) -> Harness:  # noqa: F811
    """The basic VMs on the test driver, their volumes of 16 MiB (sparse) created."""
    app = basic_app
    app.runtime = runtime
    for vm in app.domains:
        for config in vm.volume_config.values():
            if "size" in config:
                config["size"] = 16 * MiB
        if vm.qid:
            await vm.storage.create()
    work = app.domains["work"]
    work.memory = 777
    work.netvm = app.domains["sys-net"]
    work.features["vm-config.x"] = "y"
    work.tags.add("backed-up")
    private = work.volumes["private"].export_path()
    with open(private, "r+b") as image:
        image.seek(5 * MiB)  # data after a hole
        image.write(os.urandom(64 * 1024))
    (Path(work.dir_path) / "notes.txt").write_text("my notes\n")
    app.save()
    harness = Harness(app, tmp_path)
    (tmp_path / "out").mkdir()
    return harness


def write_profile(api: Harness, name: str, text: str) -> None:
    directory = api.server.paths.etc_dir / "qubes" / "backup"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.conf").write_text(text)


def profile_text(api: Harness, **overrides: str) -> str:
    settings = {"destination_vm": "dom0", "destination_path": str(api.app.base_dir / "out"),
                "include": "[work, debian-12]", "compression": "true",
                "passphrase_text": f"'{PASSPHRASE}'", **overrides}
    return "".join(f"{key}: {value}\n" for key, value in settings.items() if value)


def backups(api: Harness) -> list[Path]:
    return sorted((api.app.base_dir / "out").iterdir())


def image_digest(vm: Any, volume: str) -> str:
    with open(vm.volumes[volume].export_path(), "rb") as image:
        return hashlib.file_digest(image, "sha256").hexdigest()


@pytest.fixture
def target_app(tmp_path: Path) -> Any:
    app = Qubes.create_empty_store(tmp_path / "restored" / "qubes.xml", setup_check="auto")
    yield app
    app.close()


async def test_backup_restores_volumes_and_settings(api: Harness, target_app: Any) -> None:
    write_profile(api, "weekly", profile_text(api))
    assert "work" in await api.call("admin.backup.Info", "dom0", "weekly")
    progress: list[int] = []
    api.app.add_handler("backup-progress",
                        lambda app, event, **kw: progress.append(int(kw["progress"])))
    assert await api.call("admin.backup.Execute", "dom0", "weekly") == ""
    [archive] = backups(api)
    assert progress and progress[-1] == 100
    work = api.app.domains["work"]
    assert work.backup_timestamp > 0
    assert Qubes(api.app.store.path, lock=False).domains["work"].backup_timestamp == (
        work.backup_timestamp)
    assert api.app.domains["sys-net"].property_is_set("backup_timestamp") is False

    target_app.add_new_vm("AppVM", name="sys-net", label="red", provides_network=True)
    result = await restore_backup(target_app, archive, PASSPHRASE.encode())
    assert result.restored == ["debian-12", "work"] and result.skipped == {}
    restored = target_app.domains["work"]
    assert (type(restored).__name__, restored.label.name, restored.template.name) == (
        "AppVM", work.label.name, "debian-12")
    assert restored.memory == 777 and restored.netvm.name == "sys-net"
    assert restored.features["vm-config.x"] == "y" and "backed-up" in restored.tags
    assert "backup-content" not in restored.features
    assert image_digest(restored, "private") == image_digest(work, "private")
    assert image_digest(target_app.domains["debian-12"], "root") == image_digest(
        api.app.domains["debian-12"], "root")
    assert (Path(restored.dir_path) / "notes.txt").read_text() == "my notes\n"
    reloaded = Qubes(target_app.store.path, lock=False)
    assert reloaded.domains["work"].memory == 777
    reloaded.close()

    again = await restore_backup(target_app, archive, PASSPHRASE.encode())
    assert again.restored == [] and "exists already" in again.skipped["work"]


async def test_archive_is_qubes_format_4(api: Harness, tmp_path: Path) -> None:
    """The parts open with the scrypt tool, bound to their names, as Qubes' restore
    opens them."""
    require_tool("scrypt")
    write_profile(api, "fmt", profile_text(api, include="[work]"))
    await api.call("admin.backup.Execute", "dom0", "fmt")
    [archive] = backups(api)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "x", filter="data")
    qid = api.app.domains["work"].qid
    assert names == ["backup-header", "backup-header.hmac", "qubes.xml.000.enc",
                     f"vm{qid}/private.img.000.enc", f"vm{qid}/notes.txt.000.enc"]
    header = (tmp_path / "x" / "backup-header").read_text()
    fields = dict(line.split("=", 1) for line in header.splitlines())
    assert fields["version"] == "4" and fields["encrypted"] == "True"
    assert fields["compressed"] == "True" and fields["compression-filter"] == "gzip"

    def tool_decrypt(part: str, prefix: str) -> bytes:
        env = {**os.environ, "BACKUP_PASS": prefix + PASSPHRASE}
        return subprocess.run(["scrypt", "dec", "--passphrase", "env:BACKUP_PASS",
                               str(tmp_path / "x" / part)], env=env, check=True,
                              capture_output=True).stdout

    assert tool_decrypt("backup-header.hmac", "backup-header!").decode() == header
    part = f"vm{qid}/private.img.000"
    inner = tool_decrypt(part + ".enc", f"{fields['backup-id']}!{part}!")
    listing = subprocess.run(["tar", "-tz"], input=inner, capture_output=True, check=True)
    assert listing.stdout.decode().split() == [f"vm{qid}/private.img"]
    # And the other way: a part the tool made opens here (and only with its passphrase).
    (tmp_path / "plain").write_bytes(inner)
    subprocess.run(["scrypt", "enc", "--logN", "10", "-r", "8", "-p", "1", "--passphrase",
                    "env:BACKUP_PASS", str(tmp_path / "plain"), str(tmp_path / "tool.enc")],
                   env={**os.environ, "BACKUP_PASS": "x!" + PASSPHRASE}, check=True)
    sealed = (tmp_path / "tool.enc").read_bytes()
    assert scrypt.decrypt_bytes(sealed, ("x!" + PASSPHRASE).encode()) == inner
    with pytest.raises(scrypt.ScryptError, match="wrong passphrase"):
        scrypt.decrypt_bytes(sealed, PASSPHRASE.encode())


async def test_damaged_or_wrong_passphrase_restores_nothing(api: Harness, target_app: Any,
                                                           tmp_path: Path) -> None:
    write_profile(api, "d", profile_text(api, include="[work]"))
    await api.call("admin.backup.Execute", "dom0", "d")
    [archive] = backups(api)
    target_app.add_new_vm("TemplateVM", name="debian-12", label="black")
    with pytest.raises(exc.QubesException, match="wrong passphrase"):
        await restore_backup(target_app, archive, b"guess")
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"vm{api.app.domains['work'].qid}/private.img.000.enc")
        offset = member.offset_data + 200
    data[offset] ^= 0x01
    damaged = tmp_path / "damaged"
    damaged.write_bytes(bytes(data))
    with pytest.raises(exc.QubesException, match="altered or truncated"):
        await restore_backup(target_app, damaged, PASSPHRASE.encode())
    assert sorted(target_app.domains.keys()) == ["debian-12", "dom0"]
    assert restore_module.PART_RE.match("../x.000.enc") is None


@pytest.mark.parametrize("name, text, error, message", [
    ("ghost", None, exc.QubesBackupProfileNotFoundError, "does not exist"),
    ("../etc", None, exc.QubesValueError, "invalid backup profile name"),
    ("bad", "destination_vm: [\n", exc.QubesException, "is not YAML"),
    ("bad", "- a\n- b\n", exc.QubesException, "must be a mapping"),
    ("bad", "{destination_vm: dom0, destination_path: /tmp, passphrase_text: x, "
            "colour: red}", exc.QubesException, "unknown setting colour"),
    ("bad", "{destination_vm: dom0, passphrase_text: x}", exc.QubesException,
     "destination_path is missing"),
    ("bad", "{destination_vm: dom0, destination_path: relative, passphrase_text: x}",
     exc.QubesException, "not an absolute path"),
    ("bad", "{destination_vm: dom0, destination_path: /nonexistent/dir/file, "
            "passphrase_text: x}", exc.QubesException, "no such directory"),
    ("bad", "{destination_vm: sys-net, destination_path: /tmp, passphrase_text: x}",
     exc.QubesException, "needs the qubes.Backup service call"),
    ("bad", "{destination_vm: ghost, destination_path: /tmp, passphrase_text: x}",
     exc.QubesException, "'ghost' does not exist"),
    ("bad", "{destination_vm: dom0, destination_path: /tmp, passphrase_vm: vault}",
     exc.QubesException, "set passphrase_text"),
    ("bad", "{destination_vm: dom0, destination_path: /tmp, passphrase_text: x, "
            "compression: rar}", exc.QubesException, "compression must be"),
    ("bad", "{destination_vm: dom0, destination_path: /tmp, passphrase_text: x, "
            "include: work}", exc.QubesException, "include must be a list"),
])
async def test_bad_profile_writes_nothing(api: Harness, name: str, text: str | None,
                                          error: type, message: str) -> None:
    if text is not None:
        write_profile(api, name, text)
    before = api.app.store.path.read_bytes()
    with pytest.raises(error, match=message):
        await api.call("admin.backup.Execute", "dom0", name)
    assert backups(api) == [] and api.app.store.path.read_bytes() == before


async def test_cancel_stops_and_leaves_no_file(api: Harness) -> None:
    write_profile(api, "c", profile_text(api, include="[work]", compression="false"))
    with pytest.raises(exc.QubesException, match="no backup of profile 'c' is running"):
        await api.call("admin.backup.Cancel", "dom0", "c")
    cancels: list[str] = []

    async def on_progress(app: Any, event: str, **kwargs: Any) -> None:
        if not cancels:  # the writer waits for this handler, then reads no further
            cancels.append(await api.call("admin.backup.Cancel", "dom0", "c"))

    api.app.add_handler("backup-progress", on_progress)
    with pytest.raises(exc.BackupCancelledError):
        await api.call("admin.backup.Execute", "dom0", "c")
    assert cancels == [""]
    assert backups(api) == []
    assert not api.app.domains["work"].property_is_set("backup_timestamp")


async def test_second_run_of_a_running_profile_refused(api: Harness) -> None:
    write_profile(api, "twice", profile_text(api, include="[work]"))
    second: list[bytes | None] = []

    async def on_progress(app: Any, event: str, **kwargs: Any) -> None:
        if not second:  # while the first one runs
            second.append(await api.raw("admin.backup.Execute", "dom0", "twice"))

    api.app.add_handler("backup-progress", on_progress)
    assert await api.call("admin.backup.Execute", "dom0", "twice") == ""
    assert second[0] is not None and b"BackupAlreadyRunningError" in second[0]
    assert len(backups(api)) == 1
