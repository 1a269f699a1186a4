"""qubesd killed in the middle of creating a VM: at its next start, the files of a VM
that qubes.xml never recorded are removed, those of recorded VMs are kept.

A real qubesd process, killed with SIGKILL after the VM's files were made but
before qubes.xml recorded it (the file is immutable meanwhile, so its save
fails; ``chattr +i``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.client.transport import Transport
from qubes_core.paths import resolve
from qubes_core.vm.pending import DIRECTORY
from tests.functional.storage.conftest import loop_filesystem, require_loop_mounts
from tests.requirements import require_tool


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A template on a loop-mounted ext4 (whose files take ``chattr +i``)."""
    require_tool("chattr")
    require_loop_mounts("ext4")
    with loop_filesystem("ext4", tmp_path, size=64 * 1024**2) as mount:
        base = mount / "inst"
        base.mkdir()
        app = Qubes.create_empty_store(base / "qubes.xml", setup_check="auto")
        try:
            app.default_template = app.add_new_vm("TemplateVM", name="debian-12",
                                                  label="black")
            app.save()
        finally:
            app.close()
        try:
            yield base
        finally:
            subprocess.run(["chattr", "-i", str(base / "qubes.xml")], check=False)


def _start(base: Path) -> EmbeddedQubesd:
    daemon = EmbeddedQubesd.start(base, runtime="offline")
    assert daemon is not None
    return daemon


def _create(base: Path, name: str) -> None:
    Transport(resolve(base).admin_socket).call(
        "admin.vm.Create.AppVM", "dom0", "debian-12", f"name={name} label=red".encode())


def test_files_of_an_unrecorded_creation_are_removed_at_start(base: Path) -> None:
    daemon = _start(base)
    try:
        _create(base, "kept")  # acknowledged: recorded in qubes.xml
        subprocess.run(["chattr", "+i", str(base / "qubes.xml")], check=True)
        with pytest.raises(exc.QubesStoreError):
            _create(base, "lost")
        assert (base / "appvms" / "lost" / "private.img").exists()
    finally:
        daemon.process.kill()  # no chance to save or clean up
        daemon.process.wait()
        daemon.stop()
    subprocess.run(["chattr", "-i", str(base / "qubes.xml")], check=True)
    daemon = _start(base)
    try:
        names = Transport(resolve(base).admin_socket).call("admin.vm.List").decode()
        assert "kept " in names and "lost " not in names
        assert not (base / "appvms" / "lost").exists()
        assert (base / "appvms" / "kept" / "private.img").exists()
        assert list((base / DIRECTORY).iterdir()) == []
        _create(base, "lost")  # the name is free again, with nothing in its way
        assert (base / "appvms" / "lost" / "private.img").exists()
    finally:
        daemon.stop()


def test_a_directory_without_a_record_is_left_alone(base: Path) -> None:
    stranger = base / "appvms" / "stranger"
    stranger.mkdir(parents=True)
    (stranger / "private.img").write_bytes(b"someone's data")
    daemon = _start(base)
    daemon.stop()
    assert (stranger / "private.img").read_bytes() == b"someone's data"
