"""A VM's socket to qubesd: readiness, its QubesDB, and the qrexec calls it makes.

Invariant: the VM is known by the socket it connected to (each VM has its own, in
a directory only its sandbox has bound), never by anything it sends; everything it
sends is untrusted and bounded: one message per connection, at most
:data:`MAX_CONNECTIONS` connections at once, at most :data:`MAX_QDB_KEYS` keys in
its QubesDB. A bad request gets ``{"error": ...}`` and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from qubes_core.agent import wire
from qubes_core.backend.sandbox import aiowire
from qubes_core.qubesdb import QubesDBError

if TYPE_CHECKING:
    from qubes_core.backend.sandbox import Sandbox
    from qubes_core.backend.sandbox.router import Router

log = logging.getLogger("qubes.backend.sandbox")

MAX_CONNECTIONS = 64
MAX_QDB_KEYS = 4096
REQUEST_TIMEOUT = 10.0


class Channel:
    """The listening socket ``qubesd.sock`` in one VM's channel directory."""

    def __init__(self, box: Sandbox, router: Router):
        self.box = box
        self.router = router
        self.sock: socket.socket | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        # Every user of the VM may use qrexec and QubesDB, as on Qubes; the directory
        # is bound into this VM only.
        self.sock = aiowire.listen(str(self.box.channel_dir / "qubesd.sock"), mode=0o666)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        for task in list(self.tasks):
            task.cancel()

    def _accept(self) -> None:
        if self.sock is None:
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(self.tasks) >= MAX_CONNECTIONS:
            conn.close()  # flood: refuse, the VM's tool reports it
            log.warning("%s: too many requests at once; refusing one", self.box.vm)
            return
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        with conn:
            try:
                request, fds = await asyncio.wait_for(aiowire.recv(conn), REQUEST_TIMEOUT)
                if request is None:
                    return
                op = request.get("op")
                if op == "call":
                    reply = await self.router.call_from_vm(self.box.vm, request, fds)
                    fds = []
                else:
                    wire.close_all(fds)
                    fds = []
                    reply = self.handle(op, request)
                await aiowire.send(conn, reply)
            except (OSError, wire.WireError, TimeoutError) as error:
                log.warning("%s: bad request on its qubesd socket: %s", self.box.vm, error)
            except Exception:  # one request never takes the channel down
                log.exception("%s: request on its qubesd socket failed", self.box.vm)
                with contextlib.suppress(OSError, wire.WireError):
                    await aiowire.send(conn, {"error": "internal error in qubesd", "exit": 126})
            finally:
                wire.close_all(fds)

    def handle(self, op: Any, request: dict[str, Any]) -> dict[str, Any]:
        """Requests other than calls: ``hello`` and ``qdb``."""
        if op == "hello":
            self.box.ready.set()
            return {"ok": True}
        if op == "qdb":
            return self.qdb(request)
        return {"error": "unknown operation"}

    def qdb(self, request: dict[str, Any]) -> dict[str, Any]:
        """One QubesDB operation on the VM's own store (``vm.qdb``)."""
        qdb = self.box.vm.qdb
        cmd, path = request.get("cmd"), request.get("path")
        if qdb is None:
            return {"error": "this VM has no QubesDB"}
        if not isinstance(path, str):
            return {"error": "a path is needed"}
        try:
            if cmd == "read":
                qdb._check_key(path)
                value = qdb.read(path)
                return {"value": value.decode("utf-8", "replace") if value is not None
                        else None}
            if cmd == "write":
                value = request.get("value")
                if not isinstance(value, str):
                    return {"error": "a value is needed"}
                if qdb.read(path) is None and len(qdb.list("/")) >= MAX_QDB_KEYS:
                    return {"error": f"QubesDB of this VM is full ({MAX_QDB_KEYS} keys)"}
                qdb.write(path, value)
                return {"ok": True}
            if cmd == "rm":
                qdb._check_key(path.rstrip("/") or "/")
                qdb.rm(path)
                return {"ok": True}
            if cmd in ("list", "multiread"):
                return {"entries": {key: value.decode("utf-8", "replace")
                                    for key, value in qdb.multiread(path).items()}}
        except QubesDBError as error:
            return {"error": str(error)}
        return {"error": "unknown QubesDB operation"}
