"""The sandbox's empty file systems: cloned from a cached image, made once per size."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qubes_core.backend.sandbox import blankfs
from qubes_core.backend.sandbox.keeper import has_ext_fs
from tests.requirements import require_tool

MiB = 1024**2


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("mkfs.ext4", "dumpe2fs", "debugfs")


def features(image: Path) -> tuple[str, str]:
    """The label and the feature list of the ext4 file system in ``image``."""
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                         check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields["Filesystem volume name"].strip(), fields["Filesystem features"]


def sparse(path: Path, size: int, content: bytes = b"") -> str:
    with open(path, "wb") as file:
        file.write(content)
        file.truncate(size)
    return str(path)


def test_volatile_is_new_at_every_prepare_and_private_only_at_first(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    volatile = sparse(tmp_path / "volatile.img", 64 * MiB, b"old volatile data")
    private = sparse(tmp_path / "private.img", 96 * MiB)
    blankfs.prepare(private, volatile, cache)
    assert has_ext_fs(volatile) and has_ext_fs(private)
    assert os.path.getsize(volatile) == 64 * MiB
    assert os.path.getsize(private) == 96 * MiB
    label, flags = features(Path(volatile))
    assert label == "volatile" and "has_journal" not in flags
    label, flags = features(Path(private))
    assert label == "private" and "has_journal" in flags

    subprocess.run(["debugfs", "-w", "-R", "mkdir kept", private], check=True,
                   capture_output=True)
    subprocess.run(["debugfs", "-w", "-R", "mkdir gone", volatile], check=True,
                   capture_output=True)
    blankfs.prepare(private, volatile, cache)
    listing = ["debugfs", "-R", "ls -l /"]
    assert b"kept" in subprocess.run([*listing, private], capture_output=True,
                                     check=True).stdout
    assert b"gone" not in subprocess.run([*listing, volatile], capture_output=True,
                                         check=True).stdout


def test_a_cached_size_needs_no_mkfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    cache = tmp_path / "cache"
    blankfs.prepare(None, sparse(tmp_path / "a.img", 32 * MiB), cache)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # mkfs.ext4 cannot run now
    again = sparse(tmp_path / "b.img", 32 * MiB, b"junk")
    blankfs.prepare(None, again, cache)
    assert has_ext_fs(again)
    with pytest.raises(FileNotFoundError):  # another size would need mkfs.ext4
        blankfs.prepare(None, sparse(tmp_path / "c.img", 48 * MiB), cache)
    assert sorted(p.name for p in cache.iterdir()) == [
        f"volatile-nojournal-{32 * MiB}-v{blankfs.FORMAT}.img"]  # no temporary file left


def test_a_failed_mkfs_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    image = sparse(tmp_path / "tiny.img", 4096)  # too small for any ext4
    with pytest.raises(blankfs.BlankFsError, match=r"^mkfs\.ext4 failed: [^\n]+$"):
        blankfs.prepare(None, image, cache)
    assert list(cache.iterdir()) == []
    assert not has_ext_fs(image)
