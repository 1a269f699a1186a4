"""The sandbox runtime: each VM a bubblewrap sandbox on its real, loop-mounted volumes.

Invariant: a VM's state is read from its processes, never kept beside them. A VM
runs while the init its keeper recorded (``vm.json`` in the VM's run directory:
pids with their start ticks, so a reused pid is not mistaken for it) is alive;
its stop is seen through a pidfd on that init, and handled (record read for the
exit code, channel closed, ``domain-stopped`` fired) only after the keeper, which
holds the loop mounts, has exited too, so the storage commits unmounted images.
VMs are not children of qubesd: after a restart :meth:`SandboxRuntime.bind`
finds them again from their records (and handles the stop of one that ended
meanwhile). See :mod:`.keeper` for the VM's side of the host, :mod:`.channel`
for its socket to qubesd and :mod:`.router` for qrexec.

Pause freezes every process of the VM's pid namespace (SIGSTOP, again for
processes forked meanwhile). Suspend is the same freeze: a sandbox has no kernel
of its own that could be put to sleep, so a suspended sandbox shows as
``Paused`` (as Qubes shows a VM whose system cannot suspend) and ``resume``
continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.backend import Runtime
from qubes_core.backend.sandbox import aiowire, keeper
from qubes_core.paths import installed_at
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.backend.sandbox.channel import Channel
    from qubes_core.backend.sandbox.router import Router
    from qubes_core.vm.base import BaseVM

log = logging.getLogger("qubes.backend.sandbox")

KEEPER_SCRIPT = keeper.__file__
STATUS_TIMEOUT = 30.0
MAX_STATUS = 65536
PAUSE_ROUNDS = 3
SIGNAL_TIMEOUT = 5.0


def run_root(app: Qubes) -> Path:
    """Where the runtime keeps the run directories of ``app``'s VMs."""
    return installed_at(app.base_dir).run_dir / "sandbox"


def log_dir(app: Qubes) -> Path:
    """Where the guest logs of ``app``'s VMs go."""
    return installed_at(app.base_dir).log_dir


def _ticks(pid: int) -> int | None:
    try:
        return keeper.start_ticks(pid)
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None, ticks: int | None) -> bool:
    return pid is not None and ticks is not None and _ticks(pid) == ticks


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Sandbox:
    """What qubesd holds of one VM that runs: its record, pidfds and channel."""

    def __init__(self, runtime: SandboxRuntime, vm: QubesVM, directory: Path):
        self.runtime = runtime
        self.vm = vm
        self.dir = directory
        self.record: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.init_pidfd: int | None = None
        self.init_exited = asyncio.Event()
        self.channel: Channel | None = None
        self.requested: str | None = None  # "shutdown" or "kill": what we asked for
        self.starting = True
        self.watching = False

    @property
    def record_path(self) -> Path:
        return self.dir / "vm.json"

    @property
    def channel_dir(self) -> Path:
        return self.dir / "channel"

    @property
    def agent_socket(self) -> str:
        return str(self.channel_dir / "agent.sock")

    def read_record(self) -> dict[str, Any]:
        try:
            return json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def init_alive(self) -> bool:
        return _alive(self.record.get("init-pid"), self.record.get("init-ticks"))

    def keeper_alive(self) -> bool:
        return _alive(self.record.get("keeper-pid"), self.record.get("keeper-ticks"))

    def watch(self) -> None:
        """Learn of the init's exit through a pidfd (works for any process, not only a child)."""
        loop = asyncio.get_running_loop()
        self.watching = True
        try:
            self.init_pidfd = os.pidfd_open(self.record["init-pid"])
        except ProcessLookupError:
            self.init_exited.set()
        else:
            if not self.init_alive():  # the pid was reused between reading and opening
                os.close(self.init_pidfd)
                self.init_pidfd = None
                self.init_exited.set()
            else:
                loop.add_reader(self.init_pidfd, self._on_init_exit)
        loop.create_task(self._handle_stop())

    def _on_init_exit(self) -> None:
        loop = asyncio.get_running_loop()
        if self.init_pidfd is not None:
            loop.remove_reader(self.init_pidfd)
            os.close(self.init_pidfd)
            self.init_pidfd = None
        self.init_exited.set()

    async def wait_keeper(self) -> None:
        """Until the keeper exited (its mounts, and so the loop devices, are gone)."""
        pid = self.record.get("keeper-pid")
        if pid is None or not self.keeper_alive():
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if not self.keeper_alive():
                return
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            loop.add_reader(pidfd, lambda: None if done.done() else done.set_result(None))
            try:
                await done
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)

    async def _handle_stop(self) -> None:
        await self.init_exited.wait()
        await self.wait_keeper()
        record = self.read_record()
        code = record.get("exit-code")
        reason = "destroyed" if self.requested == "kill" or code not in (0, None) else "shutdown"
        key = str(self.vm.uuid)
        self.runtime.stopping[key] = self  # wait_stopped finds it until the stop is handled
        try:
            await self.runtime.forget(self)
            with contextlib.suppress(OSError):
                self.record_path.unlink()
            if not self.starting:
                try:
                    await self.vm.fire_event_async("domain-stopped", reason=reason)
                except Exception:
                    log.exception("handler of domain-stopped of %s failed", self.vm)
        finally:
            self.stopped.set()
            if self.runtime.stopping.get(key) is self:
                del self.runtime.stopping[key]

    def signal(self, signum: int) -> None:
        if self.init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.init_pidfd, signum)

    def namespace_pids(self) -> list[int]:
        """Every process in the VM's pid namespace (the init first)."""
        wanted = self.record.get("pid-namespace")
        pids = [self.record["init-pid"]]
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == pids[0]:
                continue
            try:
                inode = os.stat(f"/proc/{entry}/ns/pid").st_ino
            except OSError:
                continue
            if inode == wanted:
                pids.append(int(entry))
        return pids


class SandboxRuntime(Runtime):
    """VMs as bubblewrap sandboxes (Linux, root); see the module docstring."""

    name = "sandbox"

    def __init__(self) -> None:
        self._sandboxes: dict[str, Sandbox] = {}
        # VMs halted whose stop (domain-stopped: storage commit, DispVM removal) is being
        # handled, by uuid: a start waits for that (wait_stopped) instead of failing.
        self.stopping: dict[str, Sandbox] = {}
        self._apps: list[Qubes] = []
        self._routers: dict[int, Router] = {}
        self._servers: dict[Path, KeeperServer] = {}

    # --- bookkeeping --------------------------------------------------------------

    def _dir(self, vm: BaseVM) -> Path:
        return run_root(vm.app) / str(vm.uuid)

    def _live(self, vm: BaseVM) -> Sandbox | None:
        """The sandbox of ``vm``; a VM object of a reopened app takes it over."""
        box = self._sandboxes.get(str(vm.uuid))
        if box is not None and box.vm is not vm:
            if box.dir != self._dir(vm) or not isinstance(vm, QubesVM):
                return None  # the same uuid in another installation
            box.vm = vm
        return box

    async def forget(self, box: Sandbox) -> None:
        if self._sandboxes.get(str(box.vm.uuid)) is box:
            del self._sandboxes[str(box.vm.uuid)]
        if box.channel is not None:
            box.channel.close()
            box.channel = None

    def router(self, app: Qubes) -> Router:
        """The qrexec router of ``app`` (one per app)."""
        from qubes_core.backend.sandbox.router import Router

        router = self._routers.get(id(app))
        if router is None or router.app is not app:
            router = self._routers[id(app)] = Router(app, self)
        return router

    # --- state ----------------------------------------------------------------------

    def state(self, vm: BaseVM) -> str:
        box = self._live(vm)
        if box is None or not box.record or box.init_exited.is_set() or not box.init_alive():
            return "Halted"
        if box.starting:
            return "Transient"
        return "Paused" if _proc_state(box.record["init-pid"]) in ("T", "t") else "Running"

    def start_time(self, vm: BaseVM) -> float | None:
        box = self._live(vm)
        if self.state(vm) == "Halted" or box is None:
            return None
        return box.record.get("started")

    def current_state(self, vm: BaseVM) -> dict[str, int]:
        box = self._live(vm)
        if box is None or self.state(vm) == "Halted":
            return super().current_state(vm)
        mem = cputime = 0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in box.namespace_pids():
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                mem += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
                cputime += (int(fields[11]) + int(fields[12])) * 10**9 // tick
            except (OSError, IndexError, ValueError):
                continue
        try:  # the sandbox does not limit CPUs: the ones its init may run on
            online = len(os.sched_getaffinity(box.record["init-pid"]))
        except OSError:
            online = 0
        return {"mem": mem, "mem_static_max": int(box.vm.maxmem or 0) * 1024,
                "cputime": cputime, "online_vcpus": online}

    # --- start ------------------------------------------------------------------------

    def _spec(self, vm: QubesVM, box: Sandbox) -> dict[str, Any]:
        volumes = vm.volumes

        def path(name: str) -> str | None:
            volume = volumes.get(name)
            return volume.block_device() if volume is not None else None

        root = path("root")
        if root is None:
            raise exc.QubesVMError(vm, f"cannot start {vm}: it has no root volume")
        return {"name": vm.name, "root": root, "private": path("private"),
                "volatile": path("volatile"), "mount_dir": str(box.dir / "mnt"),
                "channel_dir": str(box.channel_dir), "record": str(box.record_path)}

    async def start(self, vm: QubesVM) -> None:
        from qubes_core.backend.sandbox.channel import Channel

        if os.geteuid() != 0:
            raise exc.QubesVMError(vm, f"cannot start {vm}: the sandbox runtime needs root")
        if shutil.which("bwrap") is None:
            raise exc.QubesVMError(vm, f"cannot start {vm}: bubblewrap (bwrap) is not "
                                       "installed")
        box = Sandbox(self, vm, self._dir(vm))
        box.dir.mkdir(parents=True, exist_ok=True)
        box.channel_dir.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            box.record_path.unlink()
        box.channel = Channel(box, self.router(vm.app))
        box.channel.open()
        self._sandboxes[str(vm.uuid)] = box
        try:
            box.record = await self._launch(vm, box)
            box.watch()
            await self._wait_ready(vm, box)
        except BaseException:
            await self._undo_start(vm, box)
            raise
        box.starting = False
        await vm.fire_event_async("domain-start")

    async def _launch(self, vm: QubesVM, box: Sandbox) -> dict[str, Any]:
        status_r, status_w = os.pipe()
        guest_log = log_dir(vm.app) / f"guest-{vm.name}.log"
        guest_log.parent.mkdir(parents=True, exist_ok=True)
        try:
            spec = self._spec(vm, box)
            await self._prepare_fs(vm, spec)
            with open(guest_log, "ab") as output:
                await asyncio.to_thread(self._keepers(vm.app).launch, spec, status_w,
                                        output.fileno())
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        try:  # the keeper writes one line and closes the pipe (or ends)
            line = await asyncio.wait_for(aiowire.read_pipe(status_r, MAX_STATUS),
                                          STATUS_TIMEOUT)
        except TimeoutError:
            raise exc.QubesVMError(vm, f"cannot start {vm}: its sandbox did not report "
                                       f"within {STATUS_TIMEOUT:g} s (see {guest_log})")
        except asyncio.CancelledError:
            # Called off (qubesd stops) once the keeper was asked: the VM comes up all the
            # same, so the undo must know it, to stop it before its volumes' start is undone.
            box.record = await self._started_anyway(box, status_r)
            raise
        finally:
            os.close(status_r)
        try:
            status = json.loads(line) if line else {}
        except ValueError:
            status = {}
        if "init-pid" not in status:
            error = status.get("error") or f"its keeper stopped without a word (see {guest_log})"
            raise exc.QubesVMError(vm, f"cannot start {vm}: {error}")
        return status

    async def _started_anyway(self, box: Sandbox, status_r: int) -> dict[str, Any]:
        """What the keeper of a start that was called off started: its status, else its
        record (written before the status); empty if it started nothing."""
        with contextlib.suppress(TimeoutError, ValueError, TypeError):
            line = await asyncio.wait_for(aiowire.read_pipe(status_r, MAX_STATUS),
                                          STATUS_TIMEOUT)
            status = json.loads(line) if line else {}
            if isinstance(status, dict) and "init-pid" in status:
                return status
        return box.read_record()

    def _keepers(self, app: Qubes) -> KeeperServer:
        """The server that forks the keepers of ``app``'s VMs (one per installation)."""
        root = run_root(app)
        server = self._servers.get(root)
        if server is None:
            server = self._servers[root] = KeeperServer(root)
        return server

    async def _prepare_fs(self, vm: QubesVM, spec: dict[str, Any]) -> None:
        """A new volatile file system, and a private one at the private volume's first start."""
        from qubes_core.backend.sandbox import blankfs

        volume = vm.volumes.get("volatile") or vm.volumes.get("private")
        pool_dir = volume.pool.dir_path if volume is not None else None
        cache = Path(pool_dir) if pool_dir else run_root(vm.app)
        try:
            await asyncio.to_thread(blankfs.prepare, spec["private"], spec["volatile"],
                                    cache / blankfs.CACHE_DIR)
        except (OSError, blankfs.BlankFsError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise exc.QubesVMError(vm, f"cannot start {vm}: making the file systems of its "
                                       f"volumes failed: {reason}") from error

    async def _wait_ready(self, vm: QubesVM, box: Sandbox) -> None:
        timeout = float(vm.qrexec_timeout or 60)
        ready = asyncio.ensure_future(box.ready.wait())
        exited = asyncio.ensure_future(box.init_exited.wait())
        try:
            await asyncio.wait([ready, exited], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if box.ready.is_set():
            return
        guest_log = log_dir(vm.app) / f"guest-{vm.name}.log"
        if box.init_exited.is_set():
            raise exc.QubesVMError(vm, f"cannot start {vm}: its init exited before the "
                                       f"qrexec agent was ready: {_last_line(guest_log)}")
        raise exc.QubesVMError(vm, f"cannot start {vm}: its qrexec agent was not ready "
                                   f"within {timeout:g} s (qrexec_timeout; see {guest_log})")

    async def _undo_start(self, vm: QubesVM, box: Sandbox) -> None:
        """A start failed: no process, mount or loop device of it may stay."""
        if box.record:
            box.requested = "kill"
            if box.init_pidfd is not None:
                box.signal(signal.SIGKILL)
            elif box.init_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(box.record["init-pid"], signal.SIGKILL)
            if box.watching:
                await box.stopped.wait()
            else:
                await box.wait_keeper()
        await self.forget(box)
        for name in ("root", "private", "volatile"):
            volume = vm.volumes.get(name)
            device = volume.block_device() if volume is not None else None
            if device is not None:  # an image with no device had no loop device
                await asyncio.to_thread(wait_gone, device)
        with contextlib.suppress(OSError):
            box.record_path.unlink()

    # --- stop, pause ----------------------------------------------------------------

    def _running_box(self, vm: QubesVM, action: str) -> Sandbox:
        box = self._live(vm)
        if box is None or self.state(vm) == "Halted":
            raise exc.QubesVMNotStartedError(vm, f"cannot {action} {vm}: it is not running")
        return box

    async def shutdown(self, vm: QubesVM) -> None:
        box = self._running_box(vm, "shut down")
        box.requested = box.requested or "shutdown"
        box.signal(signal.SIGTERM)

    async def kill(self, vm: QubesVM) -> None:
        box = self._running_box(vm, "kill")
        box.requested = "kill"
        box.signal(signal.SIGKILL)
        await box.stopped.wait()

    async def _signal_all(self, box: Sandbox, signum: int) -> None:
        for _ in range(PAUSE_ROUNDS):  # again, for processes forked meanwhile
            for pid in box.namespace_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    async def pause(self, vm: QubesVM) -> None:
        box = self._running_box(vm, "pause")
        await self._signal_all(box, signal.SIGSTOP)
        await self._until_stopped_is(box, True)
        await vm.fire_event_async("domain-paused")

    async def unpause(self, vm: QubesVM) -> None:
        box = self._running_box(vm, "unpause")
        await self._signal_all(box, signal.SIGCONT)
        await self._until_stopped_is(box, False)
        await vm.fire_event_async("domain-unpaused")

    async def _until_stopped_is(self, box: Sandbox, stopped: bool) -> None:
        """A signal is delivered asynchronously: wait until the init's state shows it."""
        deadline = time.monotonic() + SIGNAL_TIMEOUT
        while (_proc_state(box.record["init-pid"]) in ("T", "t")) != stopped:
            if box.init_exited.is_set() or time.monotonic() > deadline:
                raise exc.QubesVMError(box.vm, f"{box.vm} did not "
                                       f"{'stop' if stopped else 'continue'} on the signal")
            await asyncio.sleep(0.001)

    async def wait_stopped(self, vm: QubesVM, timeout: float) -> bool:
        box = self._live(vm) or self.stopping.get(str(vm.uuid))
        if box is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(box.stopped.wait()), timeout)
        except TimeoutError:
            return False
        return True

    # --- after a restart --------------------------------------------------------------

    def bind(self, app: Qubes) -> None:
        """Find again the VMs of ``app`` that run (or ran while no qubesd watched)."""
        from qubes_core.backend.sandbox.channel import Channel

        if app in self._apps:
            return
        self._apps.append(app)
        self.router(app)  # before qubesd-start: the router serves dom0's qrexec socket
        root = run_root(app)
        for vm in list(app.domains):
            if not isinstance(vm, QubesVM) or not (root / str(vm.uuid) / "vm.json").exists():
                continue
            box = Sandbox(self, vm, root / str(vm.uuid))
            box.record = box.read_record()
            if not box.record.get("init-pid"):
                continue
            box.starting = False
            self._sandboxes[str(vm.uuid)] = box
            if box.init_alive():
                box.channel = Channel(box, self.router(app))
                box.channel.open()
                box.ready.set()
                with contextlib.suppress(Exception):
                    vm.create_qdb_entries()  # qubesd's side of its QubesDB, refilled
                log.info("found %s running (init pid %s)", vm, box.record["init-pid"])
            else:
                log.info("%s stopped while qubesd was not running; handling its stop", vm)
                vm._set_volumes_in_use(True)
            box.watch()

    def close(self) -> None:
        """Stop listening for the VMs; they keep running (they are not ours to end)."""
        for box in list(self._sandboxes.values()):
            if box.channel is not None:
                box.channel.close()
                box.channel = None
            if box.init_pidfd is not None:
                with contextlib.suppress(Exception):
                    asyncio.get_event_loop().remove_reader(box.init_pidfd)
                os.close(box.init_pidfd)
                box.init_pidfd = None
        self._sandboxes.clear()
        for server in self._servers.values():
            server.close()
        self._servers.clear()


class KeeperServer:
    """The process that forks the keepers of one installation's VMs (see :mod:`.keeper`):
    one warm Python instead of a new one per start. Started on first use, and again if
    it ended; it exits when this side closes the socket or qubesd dies."""

    def __init__(self, root: Path):
        self.root = root
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()

    def launch(self, spec: dict[str, Any], status_fd: int, output_fd: int) -> None:
        """Have a keeper started for ``spec`` (in a worker thread: it may start the server)."""
        request = json.dumps(spec).encode()
        with self.lock:
            for attempt in (1, 2):
                if self.sock is None or self.process is None or self.process.poll() is not None:
                    self._start()
                assert self.sock is not None
                try:
                    socket.send_fds(self.sock, [request], [status_fd, output_fd])
                    return
                except OSError:
                    self._stop()
                    if attempt == 2:
                        raise

    def _start(self) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", KEEPER_SCRIPT, str(theirs.fileno()), str(self.root)],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd="/",
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    def _stop(self) -> None:
        if self.sock is not None:
            self.sock.close()  # the server's end of file: it exits
            self.sock = None
        if self.process is not None:
            try:
                self.process.wait(SIGNAL_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def close(self) -> None:
        with self.lock:
            self._stop()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return f"see {path}"
    return f"{lines[-1]} (see {path})" if lines else f"see {path}"


def wait_gone(path: str, timeout: float = 10.0) -> bool:
    """Whether no loop device is attached to the image ``path`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not loop_devices_of(path):
            return True
        time.sleep(0.01)
    return False


def loop_devices_of(path: str) -> list[str]:
    """The loop devices attached to ``path``."""
    found = []
    real = os.path.realpath(path)
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing == real or backing.startswith(real + " "):
            found.append("/dev/" + entry.name)
    return found
