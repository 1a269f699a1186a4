"""The qrexec agent inside a VM: runs ``/etc/qubes-rpc/SERVICE`` handlers for qubesd.

qubesd's router connects to :data:`AGENT_SOCKET` for every call it allowed and sends
``{"op": "exec", "service", "arg", "source", "user"}`` with the caller's three pipe
ends; the handler runs with them as its stdio and its exit code goes back as
``{"exit": N}``. Handlers are looked up as on Qubes: ``SERVICE+ARG`` first, then
``SERVICE``; an executable file is run (argument as ``$1`` and in
``QREXEC_SERVICE_ARGUMENT``), any other file is a shell command line.
``/etc/qubes/rpc-config/SERVICE`` may say ``force-user='root'``. At start the agent
tells qubesd it is ready (``{"op": "hello"}``); that is what a VM start waits for.
It runs as threads of the VM's init (:mod:`.init`), which reaps every process of
the VM and so also starts and waits for the handlers (``spawn``/``wait``).
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from . import AGENT_SOCKET, QUBESD_SOCKET, wire

RPC_DIR = "/etc/qubes-rpc"
RPC_CONFIG_DIR = "/etc/qubes/rpc-config"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ARG_RE = re.compile(r"^[A-Za-z0-9_.+-]{0,64}$")
MAX_CALLS = 64
DEFAULT_USER = "user"
NOT_FOUND_EXIT = 127


def find_handler(service: str, arg: str) -> str | None:
    """The file that handles ``service+arg``, or None."""
    for name in ((f"{service}+{arg}", service) if arg else (f"{service}+", service)):
        path = os.path.join(RPC_DIR, name)
        if os.path.isfile(path):
            return path
    return None


def forced_user(service: str) -> str | None:
    """``force-user`` of the service's rpc-config file, if any."""
    try:
        with open(os.path.join(RPC_CONFIG_DIR, service), encoding="utf-8") as config:
            for line in config:
                key, _, value = line.strip().partition("=")
                if key.strip() == "force-user":
                    return value.strip().strip("'\"") or None
    except OSError:
        pass
    return None


def handler_command(path: str, arg: str) -> list[str]:
    """How to run the handler file ``path``."""
    if os.access(path, os.X_OK):
        return [path, arg] if arg else [path]
    return ["/bin/sh", path]


def user_environment(account: pwd.struct_passwd, source: str, service: str, arg: str
                     ) -> dict[str, str]:
    """A login-like environment for the handler."""
    return {
        "HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name,
        "SHELL": account.pw_shell or "/bin/sh",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "QREXEC_REMOTE_DOMAIN": source,
        "QREXEC_SERVICE_FULL_NAME": f"{service}+{arg}" if arg else service,
        "QREXEC_SERVICE_ARGUMENT": arg,
    }


Spawn = Callable[..., subprocess.Popen]
Wait = Callable[[subprocess.Popen], int]


def run_call(request: dict, fds: list[int], spawn: Spawn = subprocess.Popen,
             wait: Wait = subprocess.Popen.wait) -> dict:
    """Run one call (the handler started with ``spawn``, awaited with ``wait``); the reply
    to send back."""
    service, arg = request.get("service"), request.get("arg", "")
    source = request.get("source")
    if not (isinstance(service, str) and NAME_RE.match(service) and isinstance(arg, str)
            and ARG_RE.match(arg) and isinstance(source, str) and NAME_RE.match(source)):
        return {"error": "malformed call", "exit": NOT_FOUND_EXIT}
    wire.check_stdio(fds)
    path = find_handler(service, arg)
    if path is None:
        return {"error": f"no handler for {service} in this VM", "exit": NOT_FOUND_EXIT}
    user = forced_user(service) or request.get("user") or DEFAULT_USER
    try:
        account = pwd.getpwnam(str(user))
    except KeyError:
        return {"error": f"no user {user!r} in this VM", "exit": NOT_FOUND_EXIT}
    as_other = account.pw_uid != os.getuid()
    process = spawn(
        handler_command(path, arg), stdin=fds[0], stdout=fds[1], stderr=fds[2],
        cwd=account.pw_dir if os.path.isdir(account.pw_dir) else "/",
        env=user_environment(account, source, service, arg),
        user=account.pw_uid if as_other else None, group=account.pw_gid if as_other else None,
        extra_groups=[] if as_other else None, start_new_session=True)
    wire.close_all(fds)
    fds.clear()
    code = wait(process)
    return {"exit": code if code >= 0 else 128 - code}


class Agent:
    """Accepts calls from qubesd, each on its own connection and thread."""

    def __init__(self, path: str = AGENT_SOCKET, spawn: Spawn = subprocess.Popen,
                 wait: Wait = subprocess.Popen.wait):
        self.path = path
        self.spawn = spawn
        self.wait = wait
        self.calls = threading.BoundedSemaphore(MAX_CALLS)

    def listen(self) -> socket.socket:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        os.chmod(self.path, 0o600)
        server.listen(MAX_CALLS)
        return server

    def serve_connection(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            with conn:
                request, fds = wire.recv(conn)
                if request is None:
                    return
                if request.get("op") == "ping":
                    wire.send(conn, {"ok": True})
                    return
                if request.get("op") != "exec":
                    wire.send(conn, {"error": "unknown operation", "exit": NOT_FOUND_EXIT})
                    return
                try:
                    reply = run_call(request, fds, self.spawn, self.wait)
                except (OSError, wire.WireError) as error:
                    reply = {"error": f"cannot run the call: {error}", "exit": NOT_FOUND_EXIT}
                wire.send(conn, reply)
        except (OSError, wire.WireError) as error:
            print(f"qrexec-agent: {error}", file=sys.stderr)
        finally:
            wire.close_all(fds)
            self.calls.release()

    def serve(self, server: socket.socket) -> None:
        while True:
            conn, _ = server.accept()
            if not self.calls.acquire(blocking=False):
                conn.close()  # too many calls at once: refuse this one
                continue
            threading.Thread(target=self.serve_connection, args=(conn,), daemon=True).start()


def say_hello() -> None:
    """Tell qubesd that calls can come in."""
    try:
        with wire.connect(QUBESD_SOCKET) as sock:
            wire.send(sock, {"op": "hello"})
            wire.recv(sock)
    except (OSError, wire.WireError) as error:
        print(f"qrexec-agent: cannot tell qubesd it is ready: {error}", file=sys.stderr)


def main() -> int:
    """The ``qrexec-agent`` program (started by the VM's init)."""
    agent = Agent()
    server = agent.listen()
    say_hello()
    agent.serve(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
