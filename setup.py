"""Packaging for qubes_core: the library, its console scripts and its plugin groups."""
from pathlib import Path

from setuptools import find_packages, setup

VM_CLASSES = [
    "AdminVM = qubes_core.vm.adminvm:AdminVM",
    "AppVM = qubes_core.vm.appvm:AppVM",
    "TemplateVM = qubes_core.vm.templatevm:TemplateVM",
    "StandaloneVM = qubes_core.vm.standalonevm:StandaloneVM",
    "DispVM = qubes_core.vm.dispvm:DispVM",
]

EXTENSIONS = [
    "services = qubes_core.ext.services:ServicesExtension",
    "core_features = qubes_core.ext.core_features:CoreFeaturesExtension",
    "admin_policy = qubes_core.ext.admin_policy:AdminPolicyExtension",
    "firewall = qubes_core.ext.firewall:FirewallExtension",
]

STORAGE_DRIVERS = [
    "file-reflink = qubes_core.storage.reflink:FileReflinkPool",
    "file = qubes_core.storage.file:FilePool",
    "linux-kernel = qubes_core.storage.kernel:LinuxKernelPool",
]

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
    entry_points={
        "console_scripts": [
            "qubes-pool-migrate = qubes_core.storage.migrate:main",
            "qubesd = qubes_core.qubesd:main",
            "qubesd-query = qubes_core.client.query:main",
            "qubesd-query-fast = qubes_core.client.fastquery:main",
            "qrexec-policy-explain = qubes_core.policy.explain:main",
            "qubes-policy-install = qubes_core.policy.install:main",
        ],
        "qubes_core.vm": VM_CLASSES,
        "qubes_core.ext": EXTENSIONS,
        "qubes_core.storage": STORAGE_DRIVERS,
    },
)
