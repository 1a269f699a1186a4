"""Lay the in-VM side into a root file system (what the template builder calls).

Everything lands in fixed places of the template: this package as
``/usr/lib/qubes-sandbox/qubes_agent``, the init and the tools as small launchers,
the service handlers under ``/etc/qubes-rpc`` and the mount points the sandbox
binds (a read-only root cannot get them later). Files are written whole, so
installing again over an older copy updates it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import CHANNEL_DIR, INSTALL_DIR

TOOLS = ("qrexec-client-vm", "qubesdb-read", "qubesdb-write", "qubesdb-rm", "qubesdb-list",
         "qubesdb-multiread", "qvm-features-request")
INIT_PATH = INSTALL_DIR + "/init"

# Handlers as on Qubes: a shell for qvm-run (bash: dash reads a piped script ahead and
# truncates a large one), the root shell salt-ssh uses, the clock, a no-op session wait.
SERVICES = {
    "qubes.VMShell": "#!/bin/sh\nexec /bin/bash\n",
    "qubes.VMRootShell": "#!/bin/sh\nexec /bin/bash\n",
    "qubes.GetDate": "#!/bin/sh\nexec date -u -Iseconds\n",
    "qubes.WaitForSession": "#!/bin/sh\nexit 0\n",
}
RPC_CONFIG = {"qubes.VMRootShell": "force-user='root'\n"}
MOUNT_POINTS = ("rw", CHANNEL_DIR.lstrip("/"), "proc", "dev", "tmp", "run")


def _launcher(module: str) -> str:
    return ("#!/usr/bin/python3 -I\nimport sys\n"
            f"sys.path.insert(0, {INSTALL_DIR!r})\n"
            f"from qubes_agent.{module} import main\nsys.exit(main())\n")


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + "~new")
    temp.write_text(text, encoding="utf-8")
    os.chmod(temp, mode)
    os.replace(temp, path)


def install(root: Path) -> None:
    """Install the in-VM side into the root file system at ``root``."""
    root = Path(root)
    package = root / INSTALL_DIR.lstrip("/") / "qubes_agent"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for source in sorted(Path(__file__).parent.glob("*.py")):
        shutil.copyfile(source, package / source.name)
    _write(root / INIT_PATH.lstrip("/"), _launcher("init"), 0o755)
    for tool in TOOLS:
        _write(root / "usr/bin" / tool, _launcher("tools"), 0o755)
    for service, text in SERVICES.items():
        _write(root / "etc/qubes-rpc" / service, text, 0o755)
    for service, text in RPC_CONFIG.items():
        _write(root / "etc/qubes/rpc-config" / service, text, 0o644)
    for name in MOUNT_POINTS:
        (root / name).mkdir(parents=True, exist_ok=True)
