"""Packaging for qubes_core: the library, its console scripts and its plugin groups."""
import importlib
import os
import runpy
import sys
from pathlib import Path

from setuptools import find_packages, setup

# Imported after setuptools, which provides distutils from Python 3.12 on.
build_scripts = importlib.import_module("distutils.command.build_scripts").build_scripts

# Scripts made from one stand-alone module each, run with -I -S (no site, no
# environment): a console script's start-up costs more than a call to qubesd.
FAST_SCRIPTS = {"qubesd-query-fast": "qubes_core/client/fastquery.py"}


class BuildFastScripts(build_scripts):
    """Also write each FAST_SCRIPTS entry: ``#!<this python> -IS`` + the module's source.

    pip rewrites a ``#!python`` line to the bare interpreter and drops its flags,
    so the interpreter is written here: the one running the build, which is the
    one pip installs for (with or without build isolation). A wheel built this
    way is for this interpreter only.
    """

    def copy_scripts(self):
        self.scripts = [s for s in self.scripts or [] if s not in FAST_SCRIPTS.values()]
        outfiles, updated = super().copy_scripts()
        self.mkpath(self.build_dir)
        for name, source in FAST_SCRIPTS.items():
            target = os.path.join(self.build_dir, name)
            text = f"#!{sys.executable} -IS\n" + Path(source).read_text(encoding="utf-8")
            Path(target).write_text(text, encoding="utf-8")
            os.chmod(target, 0o755)
            outfiles.append(target)
            updated.append(target)
        return outfiles, updated


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
    package_data={"qubes_core.backend": ["templates/libvirt/*.xml"]},
    install_requires=[
        "lxml>=5",
        "jinja2>=3",
        "libvirt-python>=9",
        "asyncinotify>=4.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "pytest-timeout>=2.3",
            "hypothesis>=6",
            "ruff>=0.6",
            "salt==3008.4",
            "pytest-salt-factories>=1.0.5",
        ],
    },
    scripts=list(FAST_SCRIPTS.values()),
    cmdclass={"build_scripts": BuildFastScripts},
    entry_points={
        "console_scripts": [
            "qubes-pool-migrate = qubes_core.storage.migrate:main",
            "qubesd = qubes_core.qubesd:main",
            "qubesd-query = qubes_core.client.query:main",
            "qrexec-policy-explain = qubes_core.policy.explain:main",
            "qubes-policy-install = qubes_core.policy.install:main",
            "qubesctl = qubes_core.qubesctl.cli:main",
            "qubes-template-build = qubes_core.template_build:main",
            "qvm-run = qubes_core.cli.qvm_run:main",
        ],
        **PLUGINS,
    },
)
