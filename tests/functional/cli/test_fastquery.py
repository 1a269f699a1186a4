"""qubesd-query-fast, the C client: built at install, same arguments, bytes and exit codes as
qubesd-query (each case runs both against the same scripted server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from qubes_core import protocol

BIN = Path(sys.executable).parent
SOURCE = Path(__file__).parents[3] / "qubes_core" / "client" / "fastquery.c"
TOOLS = ["qubesd-query", "qubesd-query-fast"]


class ScriptedServer:
    """A Unix socket that records one request and answers it with ``reply`` (None: close)."""

    def __init__(self, path: Path, reply: bytes | None):
        self.path = path
        self.reply = reply
        self.request = b""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while chunk := conn.recv(65536):
                self.request += chunk
            if self.reply is not None:
                conn.sendall(self.reply)
        self.listener.close()


def run_tool(tool: str, args: list[str], stdin: bytes = b"", env: dict | None = None):
    return subprocess.run([str(BIN / tool), *args], input=stdin, capture_output=True,
                          timeout=60, env=env)


def test_installed_program_is_compiled_from_the_source():
    program = BIN / "qubesd-query-fast"
    assert program.read_bytes()[:4] == b"\x7fELF"
    assert os.access(program, os.X_OK)
    assert program.stat().st_mtime >= SOURCE.stat().st_mtime, (
        "the installed client is older than fastquery.c: run pip install -e .")


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("dest, arg, header", [
    ("dom0", "", b"admin.vm.List dom0 keyword adminvm\0"),
    ("work", "label", b"admin.vm.property.Get+label dom0 name work\0"),
    ("@adminvm", "x", b"admin.vm.property.Get+x dom0 keyword adminvm\0"),
])
def test_request_is_the_wire_format(tmp_path, tool, dest, arg, header):
    method = "admin.vm.List" if not arg else "admin.vm.property.Get"
    server = ScriptedServer(tmp_path / "s", b"0\0body")
    done = run_tool(tool, ["-c", str(server.path), "dom0", method, dest,
                           *([arg] if arg else [])], stdin=b"pay\0load")
    server.thread.join(10)
    assert server.request == header + b"pay\0load"
    assert server.request == protocol.encode_request(method, "dom0", dest, arg, b"pay\0load")
    assert (done.returncode, done.stdout) == (0, b"0\0body")


@pytest.mark.parametrize("tool", TOOLS)
def test_fail_strips_success_and_reports_exceptions(tmp_path, tool):
    server = ScriptedServer(tmp_path / "ok", b"0\0body")
    done = run_tool(tool, ["-c", str(server.path), "-e", "--fail", "dom0", "m", "dom0"])
    assert (done.returncode, done.stdout, done.stderr) == (0, b"body", b"")
    assert server.request == b"m dom0 keyword adminvm\0"  # -e: no payload read
    reply = protocol.encode_exception("QubesVMNotFoundError", "No such domain: 'x'")
    server = ScriptedServer(tmp_path / "exc", reply)
    done = run_tool(tool, ["-c", str(server.path), "-e", "--fail", "dom0", "m", "x"])
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr == b"QubesVMNotFoundError: No such domain: 'x'\n"
    server = ScriptedServer(tmp_path / "raw", reply)
    done = run_tool(tool, ["-c", str(server.path), "-e", "dom0", "m", "x"])
    assert (done.returncode, done.stdout) == (0, reply)


@pytest.mark.parametrize("tool", TOOLS)
def test_no_reply_and_no_server(tmp_path, tool):
    server = ScriptedServer(tmp_path / "s", None)
    done = run_tool(tool, ["-c", str(server.path), "-e", "dom0", "m", "dom0"])
    assert done.returncode == 2 and done.stdout == b"" and done.stderr
    done = run_tool(tool, ["-c", str(tmp_path / "absent"), "-e", "dom0", "m", "dom0"])
    assert done.returncode == 1 and b"cannot connect" in done.stderr


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("argv", [[], ["dom0", "m"], ["-x", "dom0", "m", "d"],
                                  ["a", "b", "c", "d", "e"]])
def test_usage_errors_exit_2(tool, argv):
    done = run_tool(tool, argv)
    assert done.returncode == 2 and b"usage" in done.stderr and done.stdout == b""


@pytest.mark.parametrize("tool", TOOLS)
def test_socket_of_the_base_dir(tmp_path, tool):
    (tmp_path / "run").mkdir()
    server = ScriptedServer(tmp_path / "run" / "qubesd.sock", b"0\0via base dir")
    env = {**os.environ, "QUBES_BASE_DIR": str(tmp_path)}
    done = run_tool(tool, ["--no-start", "-e", "dom0", "m", "dom0"], env=env)
    assert (done.returncode, done.stdout) == (0, b"0\0via base dir")
    server = ScriptedServer(tmp_path / "run" / "qubesd.sock2", b"0\0")
    os.replace(server.path, tmp_path / "run" / "qubesd.sock")
    env.pop("QUBES_BASE_DIR")
    done = run_tool(tool, ["--base-dir", str(tmp_path), "--no-start", "-e", "dom0", "m",
                           "dom0"], env=env)
    assert (done.returncode, done.stdout) == (0, b"0\0")
