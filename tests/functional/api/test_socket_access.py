"""Who may connect to qubesd's sockets: the owner and the socket group, nobody else.

Real sockets, and real other users: ``socat`` run as ``nobody``, with and without
the socket's group among its groups. The production group is ``qubes``; here the
server is given an existing group (``daemon``) or one that does not exist.
"""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from qubes_core.api.server import QubesdServer
from qubes_core.app import Qubes
from qubes_core.paths import resolve
from tests.functional.api.conftest import build_installation
from tests.requirements import require, require_root, require_tool

NOBODY = 65534
REQUEST = b"admin.vm.property.Get+label dom0 name vm1\x00"


@pytest.fixture
def open_base():
    """An installation directory every user may traverse (tmp_path is root's only)."""
    base = Path(tempfile.mkdtemp(prefix="qubesd-access-"))
    os.chmod(base, 0o755)
    build_installation(base, appvms=1)
    yield base
    shutil.rmtree(base, ignore_errors=True)


async def serve(base: Path, group: str) -> tuple[QubesdServer, Qubes]:
    app = Qubes(base / "qubes.xml")
    server = QubesdServer(app, resolve(base), socket_group=group)
    await server.start()
    return server, app


def call_as_nobody(path: Path, extra_groups: list[int]) -> subprocess.CompletedProcess:
    return subprocess.run(["socat", "-", f"UNIX-CONNECT:{path}"], input=REQUEST,
                          capture_output=True, user=NOBODY, group=NOBODY,
                          extra_groups=extra_groups, timeout=30)


def requirements() -> None:
    require_root()
    require_tool("socat")
    try:
        grp.getgrnam("daemon")
    except KeyError:
        require(False, "needs the group 'daemon' to stand in for 'qubes'")


async def test_group_members_may_call_others_may_not(open_base):
    requirements()
    daemon_gid = grp.getgrnam("daemon").gr_gid
    server, app = await serve(open_base, "daemon")
    try:
        for path in server.socket_paths().values():
            info = os.stat(path)
            assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
            assert info.st_gid == daemon_gid
        admin = server.paths.admin_socket
        # socat blocks: run it in a thread while the loop serves.
        member = await asyncio.to_thread(call_as_nobody, admin, [daemon_gid])
        assert member.stdout == b"0\x00default=False type=label blue", member.stderr
        outsider = await asyncio.to_thread(call_as_nobody, admin, [])
        assert outsider.returncode != 0 and outsider.stdout == b""
        assert b"Permission denied" in outsider.stderr
    finally:
        await server.stop()
        app.close()


async def test_without_the_group_only_the_owner_may_call(open_base, caplog):
    requirements()
    server, app = await serve(open_base, "no-such-group-here")
    try:
        admin = server.paths.admin_socket
        assert stat.S_IMODE(os.stat(admin).st_mode) == 0o600
        assert "only the owner may call qubesd" in caplog.text
        outsider = await asyncio.to_thread(call_as_nobody, admin, [os.getgid()])
        assert outsider.stdout == b"" and b"Permission denied" in outsider.stderr
        assert not list(admin.parent.glob("*~"))  # no temporary socket left behind
    finally:
        await server.stop()
        app.close()
