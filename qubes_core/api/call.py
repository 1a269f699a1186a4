"""One Admin API call as a handler sees it."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from qubes_core import exc
from qubes_core.api.untrusted import decode_text
from qubes_core.vm.qubesvm import QubesVM

if TYPE_CHECKING:
    from qubes_core.api.registry import MethodSpec
    from qubes_core.api.server import Connection, QubesdServer
    from qubes_core.app import Qubes
    from qubes_core.vm.base import BaseVM

T = TypeVar("T")



class NoReply(enum.Enum):
    """What a handler returns when it has sent everything itself (``admin.Events``)."""

    NO_REPLY = "no-reply"


#: The server sends no reply of its own for this call.
NO_REPLY: Final = NoReply.NO_REPLY


class ApiCall:
    """The request of one call, resolved against the model.

    ``src`` and ``dest`` are domain objects (``dest`` is dom0 for ``keyword
    adminvm``); ``arg`` is the text after ``+``; ``payload`` the raw bytes after
    the header (untrusted: decode it with :meth:`payload_text`).
    """

    def __init__(self, app: Qubes, spec: MethodSpec, src: BaseVM, dest: BaseVM, arg: str,
                 payload: bytes, server: QubesdServer | None = None):
        self.app = app
        self.spec = spec
        self.method = spec.name
        self.src = src
        self.dest = dest
        self.arg = arg
        self.payload = payload
        self.server = server
        # The client's connection, for the methods that stream (set by the server).
        self.connection: Connection | None = None
        # Callables returned by admin-permission handlers: they filter listings.
        self.filters: list[Callable[[Any], bool]] = []
        # Number of the model change made under model_change(), for its save.
        self.change: int | None = None

    def __repr__(self) -> str:
        return f"<ApiCall {self.method}+{self.arg} {self.src} -> {self.dest}>"

    def payload_text(self, what: str = "payload", *, ascii_only: bool = False) -> str:
        """The payload as text (UTF-8, or ASCII with ``ascii_only``); a clear error names
        ``what``."""
        return decode_text(self.payload, what, ascii_only=ascii_only)

    def fire_event(self, event: str, **kwargs: Any) -> list[Any]:
        """Fire ``event`` on the destination (synchronously; handlers may veto by raising)."""
        return self.dest.fire_event(event, **kwargs)

    async def fire_event_async(self, event: str, **kwargs: Any) -> list[Any]:
        """Fire ``event`` on the destination and await its async handlers."""
        return await self.dest.fire_event_async(event, **kwargs)

    def filter(self, items: Iterable[T]) -> list[T]:
        """Keep the items every permission filter lets through."""
        return [item for item in items if all(check(item) for check in self.filters)]

    @contextlib.asynccontextmanager
    async def model_change(self) -> AsyncIterator[None]:
        """Hold the server's write lock while the body changes the model (methods
        declared ``own_write_lock``); the reply waits for a save that covers it."""
        if self.server is None:
            yield
            return
        async with self.server.model_change(self):
            yield

    def require_arg(self, what: str = "argument") -> str:
        """The argument; refused (naming ``what``) when the call has none."""
        if not self.arg:
            raise exc.QubesValueError(f"{self.method} needs {what} (METHOD+ARG)")
        return self.arg

    def served(self) -> QubesdServer:
        """The server the call came through (its paths); refused for a call made
        outside qubesd."""
        if self.server is None:
            raise exc.QubesException(
                f"{self.method} needs qubesd's paths (run it with --base-dir)")
        return self.server

    def require_not_dom0(self) -> None:
        """Refuse a call whose destination is dom0."""
        if self.dest.qid == 0:
            raise exc.QubesVMError(self.dest, f"{self.method} does not apply to dom0")

    def dest_vm(self) -> QubesVM:
        """The destination, which must be a VM that runs (dom0 refused)."""
        self.require_not_dom0()
        if not isinstance(self.dest, QubesVM):
            raise exc.QubesVMError(self.dest, f"{self.method} does not apply to {self.dest}")
        return self.dest
