"""Making a qrexec call from a program's stdio: the client half both VMs and dom0 use.

A call is one connection to qubesd's qrexec socket: a request message with three
pipe descriptors (the remote program's stdin, stdout and stderr), then one reply,
``{"exit": N}`` or ``{"error": TEXT, "exit": N}``. Only pipes ever cross: when our
own stdio are not pipes of the right direction (a terminal, a file), we make pipes
and copy, so that the other side never gets a terminal or a file of ours.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Callable

from . import wire

REFUSED_EXIT = 126
BUFFER = 65536


def _is_pipe(fd: int, writable: bool) -> bool:
    import fcntl

    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return False
    return mode == (os.O_WRONLY if writable else os.O_RDONLY)


def _copy(source: int, dest: int, close_dest: bool) -> None:
    try:
        while True:
            try:
                data = os.read(source, BUFFER)
            except OSError:
                break
            if not data:
                break
            view = memoryview(data)
            while view:
                try:
                    written = os.write(dest, view)
                except OSError:
                    return
                view = view[written:]
    finally:
        if close_dest:
            os.close(dest)


class Stdio:
    """Three pipe ends for the remote side, and the threads copying to/from ours."""

    def __init__(self, stdin: int, stdout: int, stderr: int):
        self.remote: list[int] = []  # what we send: stdin read end, stdout/stderr write ends
        self._ours: list[int] = []   # our copies of the remote ends, closed once sent
        self.drains: list[threading.Thread] = []
        if _is_pipe(stdin, writable=False):
            self.remote.append(os.dup(stdin))
        else:
            read_end, write_end = os.pipe()
            self.remote.append(read_end)
            # Daemon: a terminal may never reach EOF; the call ends without it.
            threading.Thread(target=_copy, args=(stdin, write_end, True), daemon=True).start()
        for fd in (stdout, stderr):
            if _is_pipe(fd, writable=True):
                self.remote.append(os.dup(fd))
                continue
            read_end, write_end = os.pipe()
            self.remote.append(write_end)
            drain = threading.Thread(target=_copy, args=(read_end, fd, False), daemon=True)
            drain.start()
            self.drains.append(drain)

    def sent(self) -> None:
        """The remote ends are with qubesd now: drop our copies (EOF then depends on them)."""
        wire.close_all(self.remote)
        self.remote = []

    def finish(self) -> None:
        for drain in self.drains:
            drain.join()


def call(connect: Callable[[], object], request: dict, stdin: int = 0, stdout: int = 1,
         stderr: int = 2) -> int:
    """Make the call ``request`` on a new connection; the remote exit code, or 126 with a
    line on our stderr when it was refused.
    """
    try:
        sock = connect()
    except OSError as error:
        print(f"qrexec: cannot reach qubesd: {error.strerror}", file=sys.stderr)
        return REFUSED_EXIT
    with sock:  # type: ignore[attr-defined]
        stdio = Stdio(stdin, stdout, stderr)
        try:
            wire.send(sock, request, stdio.remote)  # type: ignore[arg-type]
        finally:
            stdio.sent()
        try:
            reply, fds = wire.recv(sock)  # type: ignore[arg-type]
        except (OSError, wire.WireError) as error:
            reply, fds = {"error": f"lost the connection to qubesd: {error}"}, []
        wire.close_all(fds)
    if reply is None:
        reply = {"error": "qubesd hung up without an answer"}
    stdio.finish()
    if "error" in reply:
        print(f"Request refused: {reply['error']}", file=sys.stderr)
        code = reply.get("exit", REFUSED_EXIT)
        return code if isinstance(code, int) else REFUSED_EXIT
    code = reply.get("exit")
    return code if isinstance(code, int) and 0 <= code < 256 else 1
