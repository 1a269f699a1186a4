"""Sandbox templates for the tests: built once per run from the cached root file systems.

The root file systems come from ``qubes-template-build``'s cache (outside the
checkout, so a fresh clone on the same machine reuses them; the first run
debootstraps, ~2 min per suite). Each test installation gets the image through the
storage layer's import, as a template built by the command would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import require, require_root, require_tool

GiB = 1024**3
IMAGE_SIZE = 2 * GiB


def require_sandbox() -> None:
    """Root, bubblewrap, debootstrap and e2fsprogs: what the sandbox runtime needs."""
    require_root()
    require_tool("bwrap", "debootstrap", "mkfs.ext4", "mount", "umount")
    require(Path("/dev/loop-control").exists(), "needs loop devices (/dev/loop-control)")


def build_image(suite: str, dest: Path, with_salt: bool = False) -> Path:
    """An ext4 root image of ``suite`` (cached root file system + the in-VM side)."""
    from qubes_core import template_build

    progress = template_build.Progress(quiet=True)
    tarball = template_build.cached_root(suite, with_salt, template_build.default_cache_dir(),
                                         template_build.apt_mirror(), progress)
    image = dest / f"{suite}{'-salt' if with_salt else ''}.img"
    if not image.exists():
        work = dest / f"work-{suite}"
        work.mkdir()
        image.touch()
        template_build.make_image(tarball, str(image), IMAGE_SIZE, work, progress)
        subprocess.run(["rm", "-rf", str(work)], check=True)
    return image


async def import_root(template: Any, image: Path) -> None:
    """Put ``image`` into the template's root volume through the storage import."""
    volume = template.volumes["root"]
    path = await volume.import_data(max(volume.size, os.path.getsize(image)))
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(image), path], check=True)
    await volume.import_data_end(True)


def mounts_and_loops() -> tuple[list[str], list[str]]:
    """The host's mount table and attached loop devices (backing files), for leak checks."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        mounts = sorted(line.split()[4] for line in mountinfo)
    loops = []
    for entry in sorted(Path("/sys/block").glob("loop*")):
        try:
            loops.append((entry / "loop" / "backing_file").read_text().strip())
        except OSError:
            continue
    return mounts, loops


# Where an installation without a base directory would write (Qubes' production paths).
PRODUCTION_PATHS = ("/var/lib/qubes", "/etc/qubes", "/etc/qubes-rpc", "/var/log/qubes",
                    "/var/run/qubesd.sock", "/var/run/qubes", "/var/run/sandbox",
                    "/var/run/qrexec.sock")


def production_paths_state() -> dict[str, int | None]:
    """The modification time of each production path (None: absent), to compare before
    and after a test: a relocated installation writes nothing outside its base directory."""
    state: dict[str, int | None] = {}
    for path in PRODUCTION_PATHS:
        try:
            state[path] = os.lstat(path).st_mtime_ns
        except FileNotFoundError:
            state[path] = None
    return state


def leaks_under(base: Path) -> list[str]:
    """Mounts and loop devices (anywhere in the system) that refer to files under ``base``."""
    mounts, loops = mounts_and_loops()
    inside = str(base).rstrip("/") + "/"
    found = [f"mount {m}" for m in mounts if m.startswith(inside)]
    found += [f"loop {b}" for b in loops if b.startswith(inside)]
    # Mounts inside other mount namespaces (a keeper left alive) show as processes.
    found += [f"keeper process {pid}" for pid in keeper_processes(base, servers=False)]
    return found


def keeper_processes(base: Path, servers: bool) -> list[int]:
    """The keepers of the installation at ``base`` (a keeper has a mount namespace of its
    own), or with ``servers`` the keeper servers that fork them (which have not)."""
    own = os.stat("/proc/self/ns/mnt").st_ino
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            namespace = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            continue
        if b"keeper.py" in cmdline and str(base).encode() in cmdline and (
                (namespace == own) == servers):
            found.append(int(pid))
    return found


@pytest.fixture(scope="session")
def bookworm_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bookworm root image, built once per test run."""
    require_sandbox()
    return build_image("bookworm", tmp_path_factory.mktemp("images"))


@pytest.fixture
async def sandbox_app(basic_app: Any, bookworm_image: Path) -> Any:
    """``basic_app`` on the sandbox runtime, its template holding the bookworm image.

    Every VM still running at the end is killed, and nothing of the installation may
    stay mounted or attached to a loop device.
    """
    from qubes_core.backend import make_runtime

    runtime = make_runtime("sandbox")
    basic_app.runtime = runtime
    for vm in basic_app.domains:
        if vm.qid != 0:
            await vm.storage.create()
    await import_root(basic_app.domains["debian-12"], bookworm_image)
    yield basic_app
    for vm in list(basic_app.domains):
        if vm.qid != 0 and vm.get_power_state() != "Halted":
            await vm.kill()
    runtime.close()
    assert leaks_under(Path(basic_app.base_dir)) == []


async def run_in(vm: Any, command: str, user: str | None = None, stdin: bytes = b""
                 ) -> tuple[int, bytes, bytes]:
    """Run ``command`` with bash in the running ``vm`` through the router, as dom0 would:
    ``(exit code, stdout, stderr)``."""
    import asyncio

    router = vm.app.runtime.router(vm.app)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), os.fdopen(in_w, "wb") as pipe:
            pipe.write(f"{{ {command}\n}}; exit\n".encode() + stdin)

    def drain(fd: int) -> bytes:
        with os.fdopen(fd, "rb") as pipe:
            return pipe.read()

    feeding = asyncio.to_thread(feed)
    outputs = asyncio.gather(asyncio.to_thread(drain, out_r), asyncio.to_thread(drain, err_r))
    fds = [in_r, out_w, err_w]
    try:
        reply = await router.execute(vm.name, "qubes.VMShell", "", "dom0", user, fds)
    finally:
        for fd in fds:  # those the call did not take
            os.close(fd)
    await feeding
    out, err = await outputs
    return reply.get("exit", 126), out, err + str(reply.get("error", "")).encode()


def image_without_python(tarball: Path, dest: Path) -> Path:
    """A root image with the in-VM side but no python3 (a template that cannot run it)."""
    from qubes_core.agent.install import install

    root = dest / "root"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xf", str(tarball), "-C", str(root)], check=True)
    install(root)
    (root / "usr/bin/python3").unlink()
    image = dest / "no-python.img"
    with open(image, "wb") as file:
        file.truncate(IMAGE_SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image)], check=True)
    subprocess.run(["rm", "-rf", str(root)], check=True)
    return image
