"""Packaging for qubes_core: the library, its console scripts and its plugin groups."""
import importlib
import os
import runpy
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

# Imported after setuptools, which provides distutils from Python 3.12 on.
build_scripts = importlib.import_module("distutils.command.build_scripts").build_scripts

# Programs compiled from one C file each at build time (plain libc, no extension
# module): a Python process's start-up costs more than a call to qubesd.
C_PROGRAMS = {"qubesd-query-fast": "qubes_core/client/fastquery.c"}
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]


class BuildScriptsWithPrograms(build_scripts):
    """Also compile each C_PROGRAMS entry into the scripts directory.

    The compiler is ``$CC``, else ``cc``; the Makefile installs gcc where it is
    missing. A wheel built this way is for this machine's architecture.
    """

    def copy_scripts(self):
        self.scripts = [s for s in self.scripts or [] if s not in C_PROGRAMS.values()]
        outfiles, updated = super().copy_scripts()
        self.mkpath(self.build_dir)
        compiler = os.environ.get("CC", "cc")
        for name, source in C_PROGRAMS.items():
            target = os.path.join(self.build_dir, name)
            outfiles.append(target)
            if not self.force and os.path.exists(target) and \
                    os.path.getmtime(target) >= os.path.getmtime(source):
                continue
            command = [compiler, *CFLAGS, "-o", target, source]
            try:
                subprocess.run(command, check=True)
            except (OSError, subprocess.CalledProcessError) as err:
                sys.exit(f"building {name} failed ({' '.join(command)}): {err}; "
                         "install a C compiler (apt-get install gcc)")
            updated.append(target)
        return outfiles, updated


# The qvm-* tools: one module each under qubes_core/cli (qvm_power holds the power ones).
CLI_TOOLS = [
    "qvm-ls = qubes_core.cli.qvm_ls:main",
    "qvm-prefs = qubes_core.cli.qvm_prefs:main",
    "qubes-prefs = qubes_core.cli.qvm_prefs:main_global",
    "qvm-features = qubes_core.cli.qvm_features:main",
    "qvm-service = qubes_core.cli.qvm_service:main",
    "qvm-tags = qubes_core.cli.qvm_tags:main",
    "qvm-create = qubes_core.cli.qvm_create:main",
    "qvm-remove = qubes_core.cli.qvm_remove:main",
    "qvm-clone = qubes_core.cli.qvm_clone:main",
    "qvm-start = qubes_core.cli.qvm_power:main_start",
    "qvm-shutdown = qubes_core.cli.qvm_power:main_shutdown",
    "qvm-kill = qubes_core.cli.qvm_power:main_kill",
    "qvm-pause = qubes_core.cli.qvm_power:main_pause",
    "qvm-unpause = qubes_core.cli.qvm_power:main_unpause",
    "qvm-check = qubes_core.cli.qvm_check:main",
    "qvm-sync-clock = qubes_core.cli.qvm_sync_clock:main",
    "qvm-pool = qubes_core.cli.qvm_pool:main",
    "qvm-volume = qubes_core.cli.qvm_volume:main",
    "qvm-firewall = qubes_core.cli.qvm_firewall:main",
    "qvm-device = qubes_core.cli.qvm_device:main",
    "qvm-pci = qubes_core.cli.qvm_device:main_pci",
    "qvm-block = qubes_core.cli.qvm_device:main_block",
    "qvm-usb = qubes_core.cli.qvm_device:main_usb",
]

# Each console script also gets a man page (qubes_core/cli/manpages.py).
CONSOLE_SCRIPTS = [
    "qubes-pool-migrate = qubes_core.storage.migrate:main",
    "qubesd = qubes_core.qubesd:main",
    "qubesd-query = qubes_core.client.query:main",
    "qrexec-policy-explain = qubes_core.policy.explain:main",
    "qubes-policy-install = qubes_core.policy.install:main",
    "qubesctl = qubes_core.qubesctl.cli:main",
    "qubes-template-build = qubes_core.template_build:main",
    "qvm-run = qubes_core.cli.qvm_run:main",
    *CLI_TOOLS,
]


def man_pages(entries: list[str]) -> list[tuple[str, list[str]]]:
    """Write the man pages of ``entries`` (console scripts) under build/man: data_files.

    The pages come from the tools' own parsers (qubes_core.cli.manpages), run
    from this source tree by the building interpreter; a tool that cannot be
    imported here is reported by the generator and has no page.
    """
    out = Path("build") / "man"
    # The source tree goes first on the path the build environment already has
    # (pip's isolated environment reaches its build requirements through it).
    path = [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    result = subprocess.run([sys.executable, "-m", "qubes_core.cli.manpages", str(out),
                             *entries], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(f"man pages not built:\n{result.stderr}")
        return []
    sys.stderr.write(result.stderr)
    pages = [Path(line) for line in result.stdout.splitlines() if line]
    sections = sorted({page.parent.name for page in pages})
    return [(f"share/man/{section}", [str(page) for page in pages
                                      if page.parent.name == section]) for section in sections]


# Service files for a dom0 install (under the install prefix: /usr/lib/systemd/system).
SYSTEMD_UNITS = ["contrib/qubesd.service", "contrib/qubes-sync-clock.service",
                 "contrib/qubes-sync-clock.timer"]


# The built-in plugins are listed once, in qubes_core/plugins.py (run on its own:
# importing the package here would need its dependencies).
PLUGINS = runpy.run_path("qubes_core/plugins.py")["entry_points_table"]()

setup(
    name="qubes_core",
    version="0.1.0",
    description="Management backend for Qubes-style compartmentalised systems",
    long_description=Path("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["qubes_core", "qubes_core.*"]),
    # Declared so that an editable install (make venv) puts this directory on sys.path
    # with a plain .pth line instead of an import finder, which every process of the
    # venv would load at start-up (~10 ms of the qvm-* tools' start).
    package_dir={"": "."},
    package_data={"qubes_core.backend": ["templates/libvirt/*.xml"]},
    install_requires=[
        "lxml>=5",
        "jinja2>=3",
        "libvirt-python>=9",
        "asyncinotify>=4.0",
        # TypeVar defaults (typed properties) before Python 3.13.
        "typing_extensions>=4.6; python_version < '3.13'",
        "cryptography>=41",
        "PyYAML>=6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "pytest-timeout>=2.3",
            "hypothesis>=6",
            "ruff>=0.6",
            # Pinned: a new release may find new errors (pyproject.toml has its settings).
            "mypy==2.4.1",
            "lxml-stubs==0.5.1",  # lxml's types, which mypy needs
            "salt==3008.4",
            "pytest-salt-factories>=1.0.5",
        ],
    },
    # Listed so that build_scripts runs; it compiles them instead of copying them.
    scripts=list(C_PROGRAMS.values()),
    cmdclass={"build_scripts": BuildScriptsWithPrograms},
    data_files=[*man_pages(CONSOLE_SCRIPTS), ("lib/systemd/system", SYSTEMD_UNITS)],
    entry_points={
        "console_scripts": CONSOLE_SCRIPTS,
        **PLUGINS,
    },
)
