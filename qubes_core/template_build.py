"""``qubes-template-build``: a Debian template for the sandbox runtime, from debootstrap.

Invariant: what reaches the installation is a complete ext4 root image imported
through the Admin API (``admin.vm.Create.TemplateVM``, then the volume import of
``internal.vm.volume.ImportBegin``/``ImportEnd``), or nothing: a failed build
removes the TemplateVM it created. The image is made without mounting
(``mkfs.ext4 -d``) from a root file system that is cached per suite and options
(``SUITE-minbase[-salt].tar`` under the cache directory), so a second build
skips debootstrap and takes seconds. The in-VM side (:mod:`qubes_core.agent`)
is installed fresh into every image, never cached.

``--with-salt`` installs Salt 3008.4 in ``/opt/salt`` inside the template: its
wheel set is fetched and built on the host (pip, the configured index), then
installed inside a network-less sandbox with pip run from its own wheel.
``timelib`` (no wheels; an optional import of Salt) is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("qubes.template_build")

SUITES = ("bookworm", "trixie")
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
SALT_VERSION = "3008.4"
SALT_SKIP = ("timelib",)
CACHE_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
USER = "user"
ROOT_SIZE_MIN = 2 * 1024**3


class BuildError(Exception):
    """A step of the build failed; the text says which and what to do."""


def default_cache_dir() -> Path:
    """``~/.cache/qubes_core/templates`` (or under ``$XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "qubes_core" / "templates"


def apt_mirror() -> str:
    """The Debian mirror apt on this machine uses (so debootstrap goes where apt goes)."""
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


class Progress:
    """Progress lines on a terminal, nothing when piped (errors always go to stderr)."""

    def __init__(self, quiet: bool | None = None):
        self.quiet = not sys.stderr.isatty() if quiet is None else quiet

    def step(self, text: str) -> None:
        log.info("%s", text)
        if not self.quiet:
            print(f"qubes-template-build: {text}", file=sys.stderr, flush=True)


def run(argv: list[str], what: str) -> None:
    """Run a build step; its last output lines in a :class:`BuildError` if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BuildError(f"{what} failed (exit {result.returncode}): " + " | ".join(tail))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (two builds of one key do not race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        yield


def cache_key(suite: str, with_salt: bool) -> str:
    """The cache name of a root file system: suite, variant and options."""
    return f"{suite}-minbase{'-salt' if with_salt else ''}-v{CACHE_FORMAT}"


def in_root(root: Path, argv: list[str], what: str) -> None:
    """Run ``argv`` inside ``root`` with no network (bubblewrap, as root)."""
    run(["bwrap", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
         "--tmpfs", "/tmp", "--unshare-net", "--unshare-pid", "--setenv", "PATH",
         "/usr/sbin:/usr/bin:/sbin:/bin", "--", *argv], what)


def debootstrap(suite: str, root: Path, mirror: str, progress: Progress) -> None:
    """A minimal root file system of ``suite`` with python3 and the user account."""
    progress.step(f"debootstrap {suite} (minbase, python3) from {mirror}")
    run(["debootstrap", "--variant=minbase", "--include=python3", suite, str(root), mirror],
        f"debootstrap of {suite}")
    in_root(root, ["useradd", "--create-home", "--shell", "/bin/bash", USER],
            f"adding the {USER} account")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / junk).glob("*"):
            if entry.is_file():
                entry.unlink()


def fetch_salt_wheels(python: str, dest: Path, progress: Progress) -> None:
    """Salt's wheel (built here: it is an sdist) and its dependencies' wheels for ``python``."""
    progress.step(f"fetching Salt {SALT_VERSION} and its wheels for Python {python}")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "-w", str(dest), f"salt=={SALT_VERSION}"],
        "building Salt's wheel")
    wheel = next(dest.glob("salt-*.whl"), None)
    if wheel is None:
        raise BuildError("pip built no Salt wheel")
    requirements = salt_requirements(wheel)
    abi = "cp" + python.replace(".", "")
    run([*pip, "download", "--only-binary=:all:", "--python-version", python,
         "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
         "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
         "--platform", "any", "-d", str(dest), "pip", *requirements],
        "fetching Salt's dependencies")


def salt_requirements(wheel: Path) -> list[str]:
    """Requirements of the Salt wheel, without those it can do without."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    found = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        if "extra ==" in requirement:
            continue
        project = re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]
        if project.lower() in SALT_SKIP:
            continue
        found.append(requirement)
    return found


def install_salt(root: Path, suite: str, progress: Progress) -> None:
    """Install Salt into ``root``: wheels from the host, pip inside, offline."""
    # Not under /tmp: the sandbox that installs them has a fresh /tmp.
    (root / "opt").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "opt", prefix="salt-wheels-") as wheels_dir:
        wheels = Path(wheels_dir)
        fetch_salt_wheels(SUITE_PYTHON[suite], wheels, progress)
        progress.step(f"installing Salt {SALT_VERSION} inside (offline)")
        inside = "/" + str(wheels.relative_to(root))
        pip_wheel = next(wheels.glob("pip-*.whl"))
        in_root(root, ["python3", "-m", "venv", "--without-pip", "/opt/salt"],
                "creating Salt's virtual environment")
        in_root(root, ["/opt/salt/bin/python3", f"{inside}/{pip_wheel.name}/pip", "install",
                       "-q", "--no-index", "--no-deps", "--disable-pip-version-check",
                       *[f"{inside}/{w.name}" for w in sorted(wheels.glob("*.whl"))
                         if not w.name.startswith("pip-")]],
                "installing Salt's wheels")
    for tool in ("salt-call", "salt-ssh", "salt"):
        link = root / "usr/bin" / tool
        if not link.exists():
            link.symlink_to(f"/opt/salt/bin/{tool}")


def cached_root(suite: str, with_salt: bool, cache_dir: Path, mirror: str,
                progress: Progress) -> Path:
    """The cached root file system tarball of ``suite`` (built on first use)."""
    tarball = cache_dir / f"{cache_key(suite, with_salt)}.tar"
    with locked(cache_dir / f".{tarball.name}.lock"):
        if tarball.exists():
            progress.step(f"using the cached root file system {tarball}")
            return tarball
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as work:
            root = Path(work) / "root"
            debootstrap(suite, root, mirror, progress)
            if with_salt:
                install_salt(root, suite, progress)
            progress.step(f"caching the root file system as {tarball}")
            partial = tarball.with_name(tarball.name + "~")
            run(["tar", "--numeric-owner", "--xattrs", "-cf", str(partial), "-C", str(root),
                 "."], "archiving the root file system")
            os.replace(partial, tarball)
    return tarball


def make_image(tarball: Path, image: str, size: int, work: Path, progress: Progress) -> None:
    """An ext4 image at ``image`` (``size`` bytes) of the cached root plus the in-VM side."""
    from qubes_core.agent import INSTALL_DIR
    from qubes_core.agent.install import install

    root = work / "root"
    root.mkdir()
    progress.step("unpacking the root file system")
    run(["tar", "--numeric-owner", "--xattrs", "-xf", str(tarball), "-C", str(root)],
        "unpacking the cached root file system")
    if not (root / "usr/bin/python3").exists():
        raise BuildError(f"{tarball} has no /usr/bin/python3: remove it to build again")
    install(root)
    # Compiled by the template's own Python now: a DispVM's root is new at every start,
    # so a module compiled at run time would be compiled again by every DispVM.
    in_root(root, ["python3", "-I", "-m", "compileall", "-q", "--invalidation-mode",
                   "checked-hash", INSTALL_DIR], "compiling the in-VM side")
    progress.step(f"making the ext4 image ({size // 1024**2} MiB)")
    with open(image, "r+b") as file:
        file.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-E", "nodiscard", "-d", str(root), image],
        "mkfs.ext4 -d")


def build(name: str, suite: str, *, base_dir: str | None = None, with_salt: bool = False,
          cache_dir: Path | None = None, mirror: str | None = None, label: str = "black",
          progress: Progress | None = None) -> None:
    """Build and import the TemplateVM ``name``."""
    from qubes_core.client.app import connect
    from qubes_core.client.transport import Transport
    from qubes_core.paths import resolve

    progress = progress or Progress()
    if suite not in SUITES:
        raise BuildError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    for tool in ("debootstrap", "mkfs.ext4", "bwrap", "tar"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (apt-get install debootstrap "
                             "e2fsprogs bubblewrap tar)")
    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cached_root(suite, with_salt, cache_dir, mirror or apt_mirror(), progress)
    with connect(base_dir) as app:
        app.add_new_vm("TemplateVM", name=name, label=label)
        internal = Transport(resolve(base_dir).internal_socket)
        done = False
        try:
            info = app.call("admin.vm.volume.Info", name, "root")
            size = max(int(dict(line.split("=", 1) for line in info.splitlines()
                                if "=" in line).get("size", 0)), ROOT_SIZE_MIN)
            path = internal.call_text("internal.vm.volume.ImportBegin", name, "root",
                                      str(size))
            try:
                with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".image-") as work:
                    make_image(tarball, path, size, Path(work), progress)
                internal.call("internal.vm.volume.ImportEnd", name, "root", "ok")
                done = True
            finally:
                if not done:
                    with contextlib.suppress(Exception):
                        internal.call("internal.vm.volume.ImportEnd", name, "root", "fail")
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    app.remove_vm(name)
    progress.step(f"template {name} ({suite}{', with Salt' if with_salt else ''}) is ready")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """qubes-template-build's command line."""
    parser = argparse.ArgumentParser(prog="qubes-template-build",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="installation directory (default: "
                        "$QUBES_BASE_DIR, else the production paths)")
    parser.add_argument("--suite", required=True, choices=SUITES, help="Debian suite")
    parser.add_argument("--with-salt", action="store_true",
                        help=f"install Salt {SALT_VERSION} inside the template")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"cache of built root file systems (default: {default_cache_dir()})")
    parser.add_argument("--mirror", default=None,
                        help="Debian mirror (default: the one apt uses here)")
    parser.add_argument("--label", default="black", help="label of the template")
    parser.add_argument("name", help="name of the new TemplateVM")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``qubes-template-build`` command."""
    from qubes_core import exc

    args = parse_args(argv)
    try:
        build(args.name, args.suite, base_dir=args.base_dir, with_salt=args.with_salt,
              cache_dir=args.cache_dir, mirror=args.mirror, label=args.label)
    except (BuildError, exc.QubesException, OSError) as error:
        print(f"qubes-template-build: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
