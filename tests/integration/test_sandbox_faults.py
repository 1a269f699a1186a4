"""Bad input and faults on the sandbox runtime: clear errors, nothing leaked.

Every test checks that no mount, loop device or keeper of the installation is left
(the ``sandbox_app`` fixture counts them at the end).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qubes_core import exc
from qubes_core.app import Qubes
from tests.integration.support import image_without_python, import_root, leaks_under


async def test_a_template_without_python3_fails_clearly(sandbox_app: Any, tmp_path: Path
                                                       ) -> None:
    from qubes_core import template_build

    tarball = template_build.cached_root("bookworm", False, template_build.default_cache_dir(),
                                         template_build.apt_mirror(),
                                         template_build.Progress(quiet=True))
    work_dir = tmp_path / "nopython"
    work_dir.mkdir()
    await import_root(sandbox_app.domains["debian-12"], image_without_python(tarball, work_dir))
    work = sandbox_app.domains["work"]
    work.netvm = None
    with pytest.raises(exc.QubesVMError, match=r"cannot start work: .*no /usr/bin/python3"):
        await work.start()
    assert work.get_power_state() == "Halted"
    assert not work.volumes["private"].is_dirty()
    assert leaks_under(Path(sandbox_app.base_dir)) == []


async def test_a_full_disk_during_start_is_a_clear_error(tmp_path: Path,
                                                         bookworm_image: Path) -> None:
    from qubes_core.backend import make_runtime

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600m", "tmpfs", str(small)], check=True)
    try:
        app = Qubes.create_empty_store(small / "qubes.xml", setup_check="auto")
        app.runtime = make_runtime("sandbox")
        template = app.add_new_vm("TemplateVM", name="tpl", label="black")
        work = app.add_new_vm("AppVM", name="work", label="red", template=template,
                              netvm=None)
        for vm in (template, work):
            await vm.storage.create()
        await import_root(template, bookworm_image)
        filler = small / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "status=none"],
                       check=False)
        with pytest.raises(exc.QubesException, match="No space left"):
            await work.start()
        assert work.get_power_state() == "Halted"
        assert leaks_under(small) == []
        filler.unlink()
        await work.start()  # with room again it starts
        assert work.get_power_state() == "Running"
        await work.kill()
        assert leaks_under(small) == []
        app.close()
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", str(small)], check=False)
