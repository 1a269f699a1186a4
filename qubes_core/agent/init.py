"""The init (pid 1) of a sandbox VM: start the qrexec agent, reap, stop on SIGTERM.

It binds ``/rw/home`` over ``/home`` and ``/rw/usrlocal`` over ``/usr/local`` as
Qubes does (so user files persist in a template-based VM), starts the agent (again
if it dies), and reaps every orphan. SIGTERM is the shutdown request: every other
process gets SIGTERM, then SIGKILL after :data:`GRACE` seconds, file systems are
synced and init exits 0, which is the VM's halt. Clock: the VM asks the clockvm
through ``qubes.GetDate`` at start and every 6 h and only logs the offset it would
apply (a sandbox shares the host's clock; nothing here may set it).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
import time

from . import INSTALL_DIR

GRACE = 5.0
CLOCK_INTERVAL = 6 * 3600
PYTHON = sys.executable or "/usr/bin/python3"


def log(message: str) -> None:
    """A line on the VM's console (its guest log on the host)."""
    print(f"init: {message}", file=sys.stderr, flush=True)


def mount_bind(source: str, target: str) -> None:
    """Bind ``source`` over ``target`` (a failure is left to the guest log)."""
    subprocess.run(["mount", "--bind", source, target], check=False)


def setup_rw() -> None:
    """Persistent directories on the private volume, bound over ``/home``, ``/usr/local``."""
    if not os.path.ismount("/rw"):
        return
    home = "/rw/home"
    if not os.path.isdir(home):
        subprocess.run(["cp", "-a", "/home", home], check=False)
    os.makedirs("/rw/usrlocal", exist_ok=True)
    os.makedirs("/rw/config", exist_ok=True)
    mount_bind(home, "/home")
    mount_bind("/rw/usrlocal", "/usr/local")


def start_agent() -> subprocess.Popen:
    """Start the qrexec agent as a child of init."""
    env = {"PYTHONPATH": INSTALL_DIR, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.Popen([PYTHON, "-I", "-c",
                             f"import sys; sys.path.insert(0, {INSTALL_DIR!r}); "
                             "from qubes_agent.agent import main; sys.exit(main())"],
                            env=env)


def clock_offset() -> float | None:
    """Seconds the clock would move by the clockvm's answer; None if it gave none."""
    result = subprocess.run(["qrexec-client-vm", "dom0", "qubes.GetDate"],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                            check=False)
    text = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or not text:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp.timestamp() - time.time()


def clock_loop() -> None:
    """Ask the clockvm now and every 6 h; log the offset, never set the clock."""
    while True:
        try:
            offset = clock_offset()
        except (OSError, subprocess.SubprocessError) as error:
            offset = None
            log(f"clock: cannot ask the clockvm: {error}")
        if offset is None:
            log("clock: no time from the clockvm (qubes.GetDate)")
        else:
            log(f"clock: would move the clock by {offset:+.0f} s (not set in a sandbox)")
        time.sleep(CLOCK_INTERVAL)


def reap_all() -> list[int]:
    """Reap every exited child (init adopts all orphans); their pids."""
    reaped: list[int] = []
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)


def shutdown() -> None:
    """Stop every other process (TERM, then KILL after the grace time), then sync."""
    log("shutting down")
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        reap_all()
        try:
            os.kill(-1, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    os.sync()


def main() -> int:
    """Run as the VM's pid 1 until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wake the wait below
    setup_rw()
    agent = start_agent()
    threading.Thread(target=clock_loop, daemon=True).start()
    while not stop.is_set():
        if agent.pid in reap_all() or agent.poll() is not None:
            log("the qrexec agent exited; starting it again")
            agent = start_agent()
        stop.wait(1.0)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
