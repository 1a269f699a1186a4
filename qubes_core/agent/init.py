"""The init (pid 1) of a sandbox VM: the qrexec agent, the reaper, the clock, stop on SIGTERM.

It binds ``/rw/home`` over ``/home`` and ``/rw/usrlocal`` over ``/usr/local`` as
Qubes does (so user files persist in a template-based VM), then serves qrexec
calls in its own process (the agent runs as threads of init: one Python per VM,
not two, which halves what a VM start costs). Init is the only process that
reaps: every child, its own handlers' and the orphans it adopts; a handler's
exit code goes to the agent thread that waits for it through :class:`Reaper`,
so no code is lost to the other waiter. SIGTERM is the shutdown request: every
other process gets SIGTERM, then SIGKILL after :data:`GRACE` seconds, file
systems are synced and init exits 0, which is the VM's halt. Clock: the VM asks
the clockvm through ``qubes.GetDate`` shortly after it is ready (not on the start
path: a DispVM that lives for one call never pays for it) and every 6 h, and only
logs the offset it would apply (a sandbox shares the host's clock; nothing here
may set it).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time

from . import QUBESD_SOCKET, agent, calls, wire

GRACE = 5.0
CLOCK_DELAY = 2.0
CLOCK_INTERVAL = 6 * 3600
CLOCK_LIMIT = 256
CHECK_INTERVAL = 1.0
MS_BIND = 4096


def log(message: str) -> None:
    """A line on the VM's console (its guest log on the host)."""
    print(f"init: {message}", file=sys.stderr, flush=True)


def mount_bind(source: str, target: str) -> None:
    """Bind ``source`` over ``target`` (the mount system call; a failure is logged)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        log(f"cannot bind {source} over {target}: {os.strerror(ctypes.get_errno())}")


def copy_tree(source: str, target: str) -> None:
    """What ``cp -a`` does for a home skeleton, without a process: directories, regular
    files and symbolic links, with their owner, mode and times (other kinds are left out)."""
    directories = []
    for top, dirs, files in os.walk(source):
        dest = target if top == source else os.path.join(target, os.path.relpath(top, source))
        os.mkdir(dest)
        directories.append((os.lstat(top), dest))
        for name in dirs + files:
            path, copy = os.path.join(top, name), os.path.join(dest, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(path), copy)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as src, open(copy, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            else:
                continue  # a directory is made when the walk reaches it
            _same_metadata(info, copy)
    for info, dest in reversed(directories):  # after their content, which changed their times
        _same_metadata(info, dest)


def _same_metadata(info: os.stat_result, path: str) -> None:
    os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def setup_rw() -> None:
    """Persistent directories on the private volume, bound over ``/home``, ``/usr/local``."""
    if not os.path.ismount("/rw"):
        return
    home = "/rw/home"
    if not os.path.isdir(home):
        try:
            copy_tree("/home", home)
        except OSError as error:
            log(f"cannot copy /home to {home}: {error}")
    os.makedirs("/rw/usrlocal", exist_ok=True)
    os.makedirs("/rw/config", exist_ok=True)
    mount_bind(home, "/home")
    mount_bind("/rw/usrlocal", "/usr/local")


class Reaper:
    """Init's one waiter: reaps every child and hands the codes of the awaited ones over."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.awaited: dict[int, list] = {}  # pid -> [event, exit status]

    def spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a process whose exit :meth:`wait` reports (registered before it can end)."""
        with self.lock:
            process = subprocess.Popen(argv, **kwargs)
            self.awaited[process.pid] = [threading.Event(), None]
        return process

    def wait(self, process: subprocess.Popen) -> int:
        """The exit code of a spawned process, as :meth:`subprocess.Popen.wait` gives it."""
        event, _ = self.awaited[process.pid]
        event.wait()
        with self.lock:
            status = self.awaited.pop(process.pid)[1]
        process.returncode = os.waitstatus_to_exitcode(status)
        return process.returncode

    def reap(self) -> list[int]:
        """Reap every exited child; their pids."""
        reaped = []
        with self.lock:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                reaped.append(pid)
                slot = self.awaited.get(pid)
                if slot is not None:
                    slot[1] = status
                    slot[0].set()
        return reaped


def get_date() -> bytes | None:
    """The clockvm's answer to ``qubes.GetDate`` (at most :data:`CLOCK_LIMIT` bytes)."""
    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    answer: list[bytes] = []

    def collect() -> None:
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk[:max(0, CLOCK_LIMIT - len(data))]
        answer.append(data)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        code = calls.call(lambda: wire.connect(QUBESD_SOCKET),
                          {"op": "call", "target": "dom0", "service": "qubes.GetDate"},
                          stdin=null, stdout=write_end, stderr=null)
    finally:
        os.close(write_end)
        os.close(null)
    reader.join(60)
    os.close(read_end)
    return answer[0] if code == 0 and answer else None


def clock_offset() -> float | None:
    """Seconds the clock would move by the clockvm's answer; None if it gave none."""
    import datetime  # not on the start path: the first ask is after it

    text = (get_date() or b"").decode(errors="replace").strip()
    if not text:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp.timestamp() - time.time()


def clock_loop(first_delay: float = CLOCK_DELAY) -> None:
    """Ask the clockvm soon after start and every 6 h; log the offset, never set the clock."""
    time.sleep(first_delay)
    while True:
        try:
            offset = clock_offset()
        except OSError as error:
            offset = None
            log(f"clock: cannot ask the clockvm: {error}")
        if offset is None:
            log("clock: no time from the clockvm (qubes.GetDate)")
        else:
            log(f"clock: would move the clock by {offset:+.0f} s (not set in a sandbox)")
        time.sleep(CLOCK_INTERVAL)


def start_agent(reaper: Reaper) -> threading.Thread:
    """The qrexec agent as a thread of init: listen, tell qubesd, serve."""
    def run() -> None:
        server = agent.Agent(spawn=reaper.spawn, wait=reaper.wait)
        sock = server.listen()
        agent.say_hello()
        server.serve(sock)

    thread = threading.Thread(target=run, name="qrexec-agent", daemon=True)
    thread.start()
    return thread


def shutdown(reaper: Reaper) -> None:
    """Stop every other process (TERM, then KILL after the grace time), then sync."""
    log("shutting down")
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        reaper.reap()
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
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # a signal's byte wakes the loop below
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    setup_rw()
    reaper = Reaper()
    serving = start_agent(reaper)
    threading.Thread(target=clock_loop, name="clock", daemon=True).start()
    while not stop.is_set():
        select.select([wake_r], [], [], CHECK_INTERVAL)
        try:
            while os.read(wake_r, 256):
                pass
        except BlockingIOError:
            pass
        reaper.reap()
        if not serving.is_alive():
            log("the qrexec agent stopped; starting it again")
            serving = start_agent(reaper)
    shutdown(reaper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
