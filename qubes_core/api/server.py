"""The qubesd server: Unix sockets, request framing, permission, dispatch, persistence.

One connection carries one call. The server reads the request up to EOF (at most
64 KiB), frames it, checks it against the method's declaration, asks the
permission event, runs the handler and sends the reply.

Concurrency: the model lives in the event loop's thread. Handlers of methods
declared ``write`` run one at a time under :attr:`QubesdServer.write_lock`; the
call then waits, without the lock, for a save that began after its change
(:mod:`qubes_core.api.commit`): one save acknowledges every change made before it
began, and a reply still means the change is on disk. Reads take no lock: they go
on while qubes.xml is written and fsynced in a worker thread. A write declared
``own_write_lock`` (a volume copy) does its slow part without the lock and takes
it only around its change of the model (:meth:`QubesdServer.model_change`).

Limits: a connection holds a file descriptor, and qubesd has a fixed number
(``RLIMIT_NOFILE``). Each socket serves at most its share of them at once (the
VM-facing misc socket the smallest, the admin socket the largest, together less
than half), so that no crowd of clients on one socket, idle or not, can take the
descriptors the admin socket, qubes.xml saves and the policy reloader need: a
connection beyond its socket's share is closed at once, unanswered. A request
that does not arrive in full within its socket's timeout is dropped. What
clients do wrong is logged at a bounded rate (:class:`RateLimitedLog`), so a
flood cannot fill the disk with the log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import grp
import logging
import os
import resource
import select
import socket
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubes_core import exc, protocol
from qubes_core.api.call import NO_REPLY, ApiCall, NoReply
from qubes_core.api.commit import GroupCommit
from qubes_core.api.registry import MethodSpec, get_method, import_api_modules

if TYPE_CHECKING:
    from qubes_core.api.events import EventBroadcaster
    from qubes_core.app import Qubes
    from qubes_core.backup.writer import BackupWriter
    from qubes_core.paths import Paths
log = logging.getLogger("qubes.api")

SOCKET_GROUP = "qubes"  # its members (and the owner) may call; nobody else


@dataclass(frozen=True)
class SocketLimits:
    """How much one socket may take: ``1/share`` of the descriptor limit in connections
    (at least ``floor``, at most ``cap``), and seconds for a whole request to arrive."""

    share: int
    floor: int
    cap: int
    request_timeout: float

    def connections(self, descriptors: int) -> int:
        """How many connections this socket serves at once, of ``descriptors``."""
        return max(self.floor, min(self.cap, descriptors // self.share))


# VM-facing calls (qubes.* from any VM) get the smallest share and the shortest wait.
SOCKET_LIMITS = {
    "admin": SocketLimits(share=4, floor=16, cap=1024, request_timeout=30.0),
    "internal": SocketLimits(share=8, floor=8, cap=256, request_timeout=30.0),
    "misc": SocketLimits(share=16, floor=4, cap=128, request_timeout=10.0),
}
# Descriptors assumed when the limit is unlimited.
UNLIMITED_DESCRIPTORS = 65536


def descriptor_limit() -> int:
    """The process's soft limit of open file descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_DESCRIPTORS if soft == resource.RLIM_INFINITY else soft


class RateLimitedLog:
    """Warnings about misbehaving clients, at most ``burst`` per ``interval`` seconds for
    each kind of trouble; the next one logged says how many were left out."""

    def __init__(self, logger: logging.Logger, burst: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.clock = clock
        # kind of trouble -> [start of the window, logged in it, left out]
        self._windows: dict[str, list[float]] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        """Log a warning, at most once per interval for ``key``."""
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval:
            if window is not None and window[2]:
                self.logger.warning("%d more warnings like this were not logged in %.0f s: "
                                    + message, int(window[2]), self.interval, *args)
            window = self._windows[key] = [now, 0, 0]
        if window[1] < self.burst:
            window[1] += 1
            self.logger.warning(message, *args)
        else:
            window[2] += 1


class CallRefused(Exception):
    """Close the connection without a reply (permission denied, unknown source)."""


class Connection:
    """The writing side of one call, for handlers that stream (admin.Events)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the client and wait until it is taken."""
        self.writer.write(data)
        await self.writer.drain()

    def is_closing(self) -> bool:
        """Whether the connection is closing (the client is gone)."""
        return self.writer.is_closing()

    async def finish(self, final: bytes, grace: float) -> None:
        """Send ``final`` and close; cut the connection off if the client has not taken
        it within ``grace`` seconds (what waits for it is never more than that)."""
        self.writer.write(final)
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), grace)
        except TimeoutError:
            self.writer.transport.abort()
        except ConnectionError:
            pass

    async def wait_hangup(self) -> None:
        """Return when the client has closed its end (or the connection is gone).

        The request was read up to the client's EOF, so reading tells nothing more;
        the socket reports a hangup (EPOLLHUP) once the client closed it entirely. An
        epoll set that holds only this socket, with no event asked for (hangup and
        error are always reported), becomes readable then, and the loop waits on it.
        """
        sock = self.writer.get_extra_info("socket")
        if sock is None or sock.fileno() < 0 or self.writer.is_closing():
            return
        loop = asyncio.get_running_loop()
        hung_up: asyncio.Future[None] = loop.create_future()
        with select.epoll() as watch:
            watch.register(sock.fileno(), 0)
            loop.add_reader(watch.fileno(),
                            lambda: None if hung_up.done() else hung_up.set_result(None))
            try:
                await hung_up
            finally:
                loop.remove_reader(watch.fileno())


class QubesdServer:
    """Serves the Admin API of ``app`` on the sockets named by ``paths``."""

    def __init__(self, app: Qubes, paths: Paths, *, debug: bool = False,
                 group_commit: bool = True, socket_group: str = SOCKET_GROUP):
        """``group_commit=False`` saves once per write call, holding the write lock
        through the save (the slower way, kept to measure against)."""
        self.app = app
        self.paths = paths
        self.debug = debug
        self.socket_group = socket_group
        self.group_commit = group_commit
        self.write_lock = asyncio.Lock()
        self._servers: list[asyncio.AbstractServer] = []
        self._save_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="qubesd-save")
        self.commits = GroupCommit(app, self.write_lock, self._save_thread)
        self._connections: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.Task[Any] | None] = set()
        self.limits = dict(SOCKET_LIMITS)
        self.max_connections: dict[str, int] = {}  # per socket, set at start
        self.open_connections: dict[str, int] = dict.fromkeys(self.limits, 0)
        self.client_log = RateLimitedLog(log)
        # Made by the first admin.Events call; the backups running now, by profile name.
        self.event_broadcaster: EventBroadcaster | None = None
        self.running_backups: dict[str, BackupWriter] = {}
        import_api_modules()

    # --- sockets --------------------------------------------------------------

    def socket_paths(self) -> dict[str, Path]:
        """The socket of each kind: admin, internal, misc."""
        return {"admin": self.paths.admin_socket, "internal": self.paths.internal_socket,
                "misc": self.paths.misc_socket}

    async def start(self) -> None:
        """Listen on every socket."""
        self.app.add_handler("save-request", self._on_save_request)
        descriptors = descriptor_limit()
        self.max_connections = {kind: limits.connections(descriptors)
                                for kind, limits in self.limits.items()}
        for kind, path in self.socket_paths().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            server = await asyncio.start_unix_server(
                functools.partial(self._serve, kind=kind),
                sock=_restricted_socket(path, self.socket_group), limit=protocol.MAX_REQUEST + 1)
            self._servers.append(server)
            log.info("listening on %s (%s methods, at most %d connections at once)", path,
                     kind, self.max_connections[kind])

    async def stop(self) -> None:
        """Stop listening, end the calls in progress, and save what is pending."""
        with contextlib.suppress(ValueError):
            self.app.remove_handler("save-request", self._on_save_request)
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        for path in self.socket_paths().values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._servers.clear()
        await self.commits.drain()
        self._save_thread.shutdown(wait=True)

    # --- one connection ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     kind: str) -> None:
        if self.open_connections[kind] >= self.max_connections.get(kind, 0):
            self.client_log.warning(
                f"full:{kind}", "%d connections are open on the %s socket, its limit: closing "
                "a new one unanswered", self.open_connections[kind], kind)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.open_connections[kind] += 1
        timeout = self.limits[kind].request_timeout
        try:
            data = await asyncio.wait_for(_read_request(reader), timeout)
            if data is None:
                self.client_log.warning(f"long:{kind}", "request longer than 64 KiB on the "
                                        "%s socket; closing", kind)
                return
            reply = await self.handle(data, kind, Connection(writer))
            if reply is not None and not writer.is_closing():
                writer.write(reply)
                await writer.drain()
        except TimeoutError:
            self.client_log.warning(f"slow:{kind}", "no complete request within %.0f s on the "
                                    "%s socket; closing", timeout, kind)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one connection take the server down
            log.exception("unexpected error while serving a connection")
        finally:
            self.open_connections[kind] -= 1
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(self, data: bytes, kind: str = "admin",
                     connection: Connection | None = None) -> bytes | None:
        """The reply to the request ``data`` received on the ``kind`` socket.

        None means: close without a reply.
        """
        try:
            request = protocol.parse_request(data)
        except protocol.FramingError as err:
            self.client_log.warning(f"framing:{kind}", "framing error on the %s socket: %s",
                                    kind, err)
            return None
        try:
            body = await self.call(request, kind, connection)
        except CallRefused as err:
            self.client_log.warning(f"refused:{kind}", "refused %s+%s from %s to %s: %s",
                                    request.method, request.arg, request.src, request.dest,
                                    err)
            return None
        except (exc.QubesException, exc.ProtocolError) as err:
            return self._exception_reply(err)
        except exc.PermissionDenied as err:
            self.client_log.warning(
                f"denied:{kind}", "permission denied for %s+%s from %s to %s%s",
                request.method, request.arg, request.src, request.dest,
                f": {err}" if str(err) else "")
            return None
        except Exception:
            log.exception("error in %s+%s from %s to %s", request.method, request.arg,
                          request.src, request.dest)
            return None
        if body is NO_REPLY:
            return None
        if body is None:
            body = b""
        elif isinstance(body, str):
            body = body.encode("utf-8")
        return protocol.OK + body

    def _exception_reply(self, err: BaseException) -> bytes:
        tb = "".join(traceback.format_exception(err)) if self.debug else ""
        return protocol.encode_exception(type(err).__name__, str(err), tb)

    # --- one call -----------------------------------------------------------------

    def resolve(self, request: protocol.Request, kind: str) -> ApiCall:
        """Check the request against its method's declaration; build the call."""
        spec = get_method(request.method)
        if spec is None or spec.socket != kind:
            raise exc.ProtocolError(f"no such method: {request.method!r}")
        src = self.app.domains.get(request.src)
        if src is None:
            raise CallRefused(f"unknown source {request.src!r}")
        _check_shape(spec, request)
        dest = self.app.domains.get(request.dest)
        if dest is None:
            if src.qid != 0:  # a VM learns nothing about which VMs exist
                raise CallRefused(f"unknown destination {request.dest!r}")
            raise exc.QubesVMNotFoundError(request.dest)
        if spec.dest == "adminvm" and dest.qid != 0:
            raise exc.ProtocolError(
                f"{spec.name} concerns the whole system: its destination must be dom0 "
                "(keyword adminvm)")
        return ApiCall(self.app, spec, src, dest, request.arg, request.payload, server=self)

    async def call(self, request: protocol.Request, kind: str = "admin",
                   connection: Connection | None = None) -> str | bytes | None | NoReply:
        """Resolve and run one call; its body, or an exception the caller turns into a reply."""
        call = self.resolve(request, kind)
        call.connection = connection
        await self.check_permission(call)
        if call.spec.write and not call.spec.own_write_lock:
            return await self._write_call(call)
        result = await call.spec.handler(call)
        if call.change is not None:
            await self.commits.wait_saved(call.change)
        return result

    async def check_permission(self, call: ApiCall) -> None:
        """Fire ``admin-permission:METHOD`` on the source; refuse unless granted."""
        results = await call.src.fire_event_async(
            "admin-permission:" + call.method, pre_event=True, dest=call.dest, arg=call.arg,
            method=call.method, payload=call.payload)
        granted = False
        for result in _flatten(results):
            if result is True:
                granted = True
            elif callable(result):
                call.filters.append(result)
        # qubes.* calls from VMs arrive through qrexec, whose policy already allowed
        # them; admin.* calls from a VM need an explicit grant.
        if call.src.qid != 0 and not granted and not call.spec.vm_facing:
            raise exc.PermissionDenied(f"no policy grants {call.method} to {call.src}")

    async def _write_call(self, call: ApiCall) -> str | bytes | None | NoReply:
        """Apply the change under the write lock; reply once a save covers it."""
        async with self.write_lock:
            task = asyncio.current_task()
            self._writers.add(task)
            try:
                result = await call.spec.handler(call)
            finally:
                self._writers.discard(task)
            change = self.commits.changed()
            if not self.group_commit:
                await self.commits.save_locked()
        await self.commits.wait_saved(change)
        return result

    @contextlib.asynccontextmanager
    async def model_change(self, call: ApiCall) -> AsyncIterator[None]:
        """The write lock around the model change of an ``own_write_lock`` call.

        As for other writes, a change made in the body is numbered for the save
        the call's reply waits for; a body that raises made no change to save.
        """
        async with self.write_lock:
            task = asyncio.current_task()
            self._writers.add(task)
            try:
                yield
            finally:
                self._writers.discard(task)
            call.change = self.commits.changed()
            if not self.group_commit:
                await self.commits.save_locked()

    async def save(self) -> None:
        """Persist a change made outside an API call (runtime events, timers)."""
        await self.commits.wait_saved(self.commits.changed())

    async def _on_save_request(self, app: Qubes, event: str, **kwargs: Any) -> bool:
        """``save-request`` on the app: the model changed outside a call; save it."""
        if asyncio.current_task() in self._writers:
            return True  # inside a write call: the call's own save covers the change
        await self.save()
        return True


def _flatten(results: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in results:
        if isinstance(item, (list, tuple)):
            out.extend(item)
        else:
            out.append(item)
    return out


def _check_shape(spec: MethodSpec, request: protocol.Request) -> None:
    if request.arg and not spec.argument:
        raise exc.ProtocolError(f"{spec.name} takes no argument (got {request.arg!r})")
    if not request.arg and spec.argument and not spec.argument_optional:
        raise exc.ProtocolError(f"{spec.name} needs an argument ({spec.name}+ARG)")
    if request.payload and not spec.payload:
        raise exc.ProtocolError(f"{spec.name} takes no payload (got {len(request.payload)} "
                                "bytes)")
    if len(request.payload) > spec.max_payload:
        raise exc.ProtocolError(f"{spec.name}: payload longer than {spec.max_payload} bytes")


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """Everything up to EOF; None when it exceeds the 64 KiB limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await reader.read(protocol.MAX_REQUEST + 1)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > protocol.MAX_REQUEST:
            return None
        chunks.append(chunk)


def _restricted_socket(path: Path, group: str) -> socket.socket:
    """A Unix socket bound at ``path`` that only its owner and ``group`` may connect to.

    It is bound under a temporary name, restricted, then renamed into place, so
    that it is never reachable with looser permissions. Without such a group on
    this machine (or when the owner may not give the socket to it), only the
    owner may connect.
    """
    temporary = path.with_name(path.name + "~")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        try:
            os.chown(temporary, -1, grp.getgrnam(group).gr_gid)
            os.chmod(temporary, 0o660)
        except (KeyError, PermissionError) as err:
            reason = "no such group" if isinstance(err, KeyError) else "not allowed to chown"
            log.warning("%s: only the owner may call qubesd (group %r: %s)", path, group,
                        reason)
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return sock

