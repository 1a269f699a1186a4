"""The embedded default: a qubesd started for the duration of one command.

When no qubesd listens on an installation's socket, a client tool may start
one (``qubesd --base-dir ...``), wait until it serves, and stop it when the tool
is done. If another process starts one at the same moment, the loser's qubesd
cannot take the qubes.xml lock and exits; the client then uses the winner's.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from qubes_core import exc

START_TIMEOUT = 60.0


def find_socket(base_dir: str | Path | None = None) -> Path:
    """Where the installation's admin socket is (or would be); nothing is probed."""
    from qubes_core.paths import resolve

    return resolve(base_dir).admin_socket


def listening(path: str | Path) -> bool:
    """Whether a server accepts connections on the Unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


class EmbeddedQubesd:
    """A qubesd child process that serves one installation until :meth:`stop`."""

    def __init__(self, process: subprocess.Popen[bytes], socket_path: Path):
        self.process = process
        self.socket_path = socket_path
        atexit.register(self.stop)

    @classmethod
    def start_if_needed(cls, base_dir: str | Path | None = None, *, runtime: str | None = None,
                        create: bool = False) -> EmbeddedQubesd | None:
        """Start a qubesd unless one already listens; None when one does."""
        path = find_socket(base_dir)
        if listening(path):
            return None
        return cls.start(base_dir, runtime=runtime, create=create)

    @classmethod
    def start(cls, base_dir: str | Path | None = None, *, runtime: str | None = None,
              create: bool = False, options: tuple[str, ...] = ()
              ) -> EmbeddedQubesd | None:
        """Start a qubesd (``options``: more qubesd arguments) and wait until it serves."""
        from qubes_core.paths import resolve

        paths = resolve(base_dir)
        path = paths.admin_socket
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = paths.log_dir / "qubesd-embedded.log"
        read_fd, write_fd = os.pipe()
        command = [sys.executable, "-m", "qubes_core.qubesd", "--ready-fd", str(write_fd)]
        if base_dir is not None:
            command += ["--base-dir", str(base_dir)]
        if runtime:
            command += ["--runtime", runtime]
        if create:
            command.append("--create")
        command += options
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(command, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                       stdout=log_file, stderr=log_file)
        os.close(write_fd)
        try:
            ready = _wait_ready(read_fd, START_TIMEOUT)
        finally:
            os.close(read_fd)
        if ready:
            return cls(process, path)
        if process.poll() is None:
            process.kill()
        process.wait()
        if listening(path):
            return None  # another process started one first: use it
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise exc.QubesException(f"could not start qubesd for {paths.base_dir}: "
                                 f"{lines[-1] if lines else 'no message'} (log: {log_path})")

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 10 s) and reap it."""
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_ready(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            return False  # qubesd exited before it was ready
        data += chunk
        if b"ready" in data:
            return True
    return False
