"""The qrexec router of the sandbox runtime: every call between VMs passes here.

Invariant: no call reaches a VM or dom0 unless the installation's policy allowed it
at the moment of the call (``deny`` by default; ``ask`` has no one to ask here, so
it is a deny with a log line; ``target=`` redirects; ``@dispvm`` targets get a new
DispVM that is removed after the call). Calls from dom0 (``qvm-run``, on the dom0
qrexec socket) are not subject to the policy, as on Qubes. Only pipes pass between
the two sides, and the remote exit code comes back as it was. Service names,
arguments and targets from a VM are checked before anything else happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubes_core import exc
from qubes_core.agent import wire
from qubes_core.backend.sandbox import aiowire
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.api.server import QubesdServer
    from qubes_core.app import Qubes
    from qubes_core.backend.sandbox import SandboxRuntime
    from qubes_core.policy.evaluate import Decision
    from qubes_core.policy.watch import PolicyWatcher
    from qubes_core.vm.base import BaseVM

log = logging.getLogger("qubes.qrexec")

SERVICE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ARG_RE = re.compile(r"^[A-Za-z0-9_.+-]{0,64}$")
TARGET_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
REFUSED = 126
MAX_CALLS_PER_SOURCE = 32
MAX_DOM0_PAYLOAD = 65536 - 1024
DOM0_INPUT_TIMEOUT = 60.0


class CallRefused(Exception):
    """The call does not happen; the text says why (the caller sees it)."""


def parse_service(untrusted: Any) -> tuple[str, str]:
    """``SERVICE[+ARG]`` checked; ``(service, arg)``."""
    if not isinstance(untrusted, str):
        raise CallRefused("the service name must be a string")
    service, _, arg = untrusted.partition("+")
    if not SERVICE_RE.match(service) or not ARG_RE.match(arg) or arg.startswith("-"):
        raise CallRefused(f"invalid service name {untrusted[:80]!r}")
    return service, arg


def parse_target(untrusted: Any) -> str:
    """A target name or token, checked."""
    if not isinstance(untrusted, str) or not TARGET_RE.match(untrusted):
        raise CallRefused(f"invalid target {str(untrusted)[:80]!r}")
    return untrusted


class Router:
    """Routes the qrexec calls of one app's VMs (and dom0's) through its policy."""

    def __init__(self, app: Qubes, runtime: SandboxRuntime):
        self.app = app
        self.runtime = runtime
        self.server: QubesdServer | None = None
        self._watcher: PolicyWatcher | None = None
        self._in_flight: dict[str, int] = {}
        self._dom0_sock: socket.socket | None = None
        self._dom0_tasks: set[asyncio.Task[None]] = set()
        app.add_handler("qubesd-start", self._on_qubesd_start)
        app.add_handler("qubesd-stop", self._on_qubesd_stop)

    # --- qubesd ---------------------------------------------------------------

    def _on_qubesd_start(self, app: Qubes, event: str, server: QubesdServer | None = None,
                         **kwargs: Any) -> None:
        self.server = server
        if server is not None:
            self.listen_dom0(server.paths.qrexec_socket)

    def _on_qubesd_stop(self, app: Qubes, event: str, **kwargs: Any) -> None:
        if self._dom0_sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._dom0_sock.fileno())
            self._dom0_sock.close()
            self._dom0_sock = None
        self.server = None

    def watcher(self) -> PolicyWatcher:
        from qubes_core.paths import installed_at
        from qubes_core.policy.watch import PolicyWatcher

        if self._watcher is None:
            paths = installed_at(self.app.base_dir)
            self._watcher = PolicyWatcher(paths.policy_dir, paths.rpc_dir / "policy")
        self._watcher.poll()
        return self._watcher

    # --- calls from VMs --------------------------------------------------------

    async def call_from_vm(self, vm: QubesVM, request: dict[str, Any], fds: list[int]
                           ) -> dict[str, Any]:
        """A call a VM made; ``fds`` (its stdio pipes) are ours to close."""
        source = vm.name
        try:
            service, arg = parse_service(request.get("service"))
            target = parse_target(request.get("target"))
            wire.check_stdio(fds)
            count = self._in_flight.get(source, 0)
            if count >= MAX_CALLS_PER_SOURCE:
                raise CallRefused(f"{source} has {count} calls under way already")
            decision = self.decide(service, arg, source, target)
            if decision.target is None:  # an allow always names where the call goes
                raise CallRefused(f"{service}+{arg} from {source}: the policy names no target")
            self._in_flight[source] = count + 1
            try:
                return await self.execute(decision.target, service, arg, source,
                                          decision.user, fds, autostart=decision.autostart)
            finally:
                self._in_flight[source] -= 1
        except CallRefused as refusal:
            return {"error": str(refusal), "exit": REFUSED}
        except (exc.QubesException, OSError, wire.WireError) as error:
            log.warning("qrexec call from %s failed: %s", source, error)
            return {"error": str(error), "exit": REFUSED}
        finally:
            wire.close_all(fds)

    def decide(self, service: str, arg: str, source: str, target: str) -> Decision:
        """The policy's decision, allowed or :class:`CallRefused`."""
        from qubes_core.policy.evaluate import ModelSystem, Request

        request = Request(service, arg, source, target)
        decision = self.watcher().evaluate(request, ModelSystem(self.app))
        if decision.action == "ask":
            log.warning("qrexec %s: 'ask' cannot be asked here, so it is denied (%s)",
                        request, decision.reason)
            raise CallRefused(f"{service}+{arg} from {source} to {target}: the policy says "
                              "ask, which is a deny here")
        if not decision.allowed:
            log.info("qrexec %s: denied (%s)", request, decision.reason)
            raise CallRefused(f"{service}+{arg} from {source} to {target} denied: "
                              f"{decision.reason}")
        log.info("qrexec %s: allowed to %s (%s)", request, decision.target, decision.reason)
        return decision

    # --- doing the call ---------------------------------------------------------

    async def execute(self, target: str, service: str, arg: str, source: str,
                      user: str | None, fds: list[int], autostart: bool = True
                      ) -> dict[str, Any]:
        """Run ``service+arg`` in ``target`` (a VM, dom0 or ``@dispvm:VM``)."""
        if target in ("dom0", "@adminvm"):
            return await self.call_dom0(service, arg, source, fds)
        if target == "@dispvm" or target.startswith("@dispvm:"):
            return await self.call_dispvm(target, service, arg, source, user, fds)
        vm = self.app.domains.by_name(target)
        if not isinstance(vm, QubesVM):  # dom0 is not one
            raise CallRefused(f"no VM {target!r}")
        if vm.get_power_state() == "Halted":
            if not autostart:
                raise CallRefused(f"{target} is not running (and autostart is off)")
            with contextlib.suppress(exc.QubesVMNotHaltedError):
                await vm.start()
        return await self.exec_in_vm(vm, service, arg, source, user, fds)

    async def exec_in_vm(self, vm: QubesVM, service: str, arg: str, source: str,
                         user: str | None, fds: list[int]) -> dict[str, Any]:
        box = self.runtime._live(vm)
        if box is None or not box.ready.is_set():
            raise CallRefused(f"{vm} is not running")
        try:
            sock = await aiowire.connect(box.agent_socket)
        except OSError as error:
            raise CallRefused(f"cannot reach the qrexec agent of {vm}: {error.strerror}")
        with sock:
            await aiowire.send(sock, {"op": "exec", "service": service, "arg": arg,
                                      "source": source, "user": user}, fds)
            wire.close_all(fds)
            fds.clear()
            reply, extra = await aiowire.recv(sock)
            wire.close_all(extra)
        if reply is None:
            return {"error": f"{vm} stopped during the call", "exit": REFUSED}
        code = reply.get("exit")
        if not isinstance(code, int) or not 0 <= code < 256:
            code = REFUSED
        if "error" in reply:
            return {"error": f"{vm}: {str(reply['error'])[:200]}", "exit": code}
        return {"exit": code}

    async def call_dispvm(self, target: str, service: str, arg: str, source: str,
                          user: str | None, fds: list[int]) -> dict[str, Any]:
        """Create a DispVM, run the call in it, remove it (``auto_cleanup``)."""
        from qubes_core.vm.dispvm import DispVM
        from qubes_core.vm.lifecycle import save_app

        name = target.partition(":")[2]
        appvm: BaseVM | None
        if name:
            appvm = self.app.domains.by_name(name)
        else:
            src = self.app.domains.by_name(source)
            appvm = (src.default_dispvm if src is not None else None) or self.app.default_dispvm
        if appvm is None or not appvm.template_for_dispvms:
            raise CallRefused(f"no AppVM to create a DispVM of for {target!r} (it must "
                              "exist and have template_for_dispvms)")
        dispvm = self.app.add_new_vm(DispVM, template=appvm, auto_cleanup=True)
        try:
            await dispvm.create_on_disk()
        except BaseException:
            del self.app.domains[dispvm]
            raise
        await save_app(self.app)
        log.info("qrexec: %s created for %s+%s from %s", dispvm.name, service, arg, source)
        try:
            await dispvm.start()  # a failed start removes it (auto_cleanup)
            return await self.exec_in_vm(dispvm, service, arg, source, user, fds)
        finally:
            if dispvm.get_power_state() != "Halted":
                await dispvm.kill()  # its stop removes it

    async def call_dom0(self, service: str, arg: str, source: str, fds: list[int]
                        ) -> dict[str, Any]:
        """A dom0 service: qubesd's own method of that name, on its socket."""
        from qubes_core import protocol
        from qubes_core.api.registry import get_method

        spec = get_method(service)
        if spec is None:
            raise CallRefused(f"dom0 has no service {service}")
        if self.server is None:
            raise CallRefused(f"{service} in dom0 needs qubesd serving this installation")
        payload = await asyncio.wait_for(aiowire.read_pipe(fds[0], MAX_DOM0_PAYLOAD),
                                         DOM0_INPUT_TIMEOUT)
        if payload is None:
            raise CallRefused(f"more than {MAX_DOM0_PAYLOAD} bytes of input for a dom0 "
                              "service")
        reply = await self.server.handle(
            protocol.encode_request(service, source, "dom0", arg, payload), spec.socket)
        if reply is not None and reply.startswith(protocol.OK):
            await aiowire.write_pipe(fds[1], reply[2:])
            return {"exit": 0}
        message = b"refused\n"
        if reply is not None and reply.startswith(protocol.EXCEPTION):
            parsed = protocol.parse_exception(reply[2:])
            message = f"{parsed.type_name}: {parsed.message}\n".encode()
        await aiowire.write_pipe(fds[2], message)
        return {"exit": 1}

    # --- calls from dom0 ---------------------------------------------------------

    def listen_dom0(self, path: Path) -> None:
        """Serve dom0's qrexec socket (``qvm-run``); root only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._dom0_sock = aiowire.listen(str(path))
        asyncio.get_running_loop().add_reader(self._dom0_sock.fileno(), self._accept_dom0)

    def _accept_dom0(self) -> None:
        if self._dom0_sock is None:
            return
        try:
            conn, _ = self._dom0_sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._serve_dom0(conn))
        self._dom0_tasks.add(task)
        task.add_done_callback(self._dom0_tasks.discard)

    async def _serve_dom0(self, conn: socket.socket) -> None:
        fds: list[int] = []
        with conn:
            try:
                request, fds = await aiowire.recv(conn)
                if request is None:
                    return
                reply = await self.call_from_dom0(request, fds)
                fds = []
                await aiowire.send(conn, reply)
            except (OSError, wire.WireError) as error:
                log.warning("bad request on dom0's qrexec socket: %s", error)
            except Exception:
                log.exception("a request on dom0's qrexec socket failed")
                with contextlib.suppress(OSError, wire.WireError):
                    await aiowire.send(conn, {"error": "internal error in qubesd", "exit": 126})
            finally:
                wire.close_all(fds)

    async def call_from_dom0(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        try:
            service, arg = parse_service(request.get("service"))
            target = parse_target(request.get("target"))
            wire.check_stdio(fds)
            user = request.get("user")
            if user is not None and not (isinstance(user, str) and SERVICE_RE.match(user)):
                raise CallRefused("invalid user name")
            log.info("qrexec %s+%s dom0 -> %s", service, arg, target)
            return await self.execute(target, service, arg, "dom0", user, fds,
                                      autostart=bool(request.get("autostart", True)))
        except CallRefused as refusal:
            return {"error": str(refusal), "exit": REFUSED}
        except (exc.QubesException, OSError, wire.WireError) as error:
            return {"error": str(error), "exit": REFUSED}
        finally:
            wire.close_all(fds)
