"""Programs a VM's users and scripts run: ``qrexec-client-vm``, the QubesDB tools and
``qvm-features-request``. Each is one connection to qubesd's socket for this VM
(:data:`QUBESD_SOCKET`); qubesd knows the VM by the socket, never by what it says.
"""

from __future__ import annotations

import os
import subprocess
import sys

from . import QUBESD_SOCKET, calls, wire

FEATURES_PREFIX = "/features-request/"


def _qubesd() -> object:
    return wire.connect(QUBESD_SOCKET)


def qdb(cmd: str, **args: str) -> dict:
    """One QubesDB operation on this VM's store in qubesd."""
    with wire.connect(QUBESD_SOCKET) as sock:
        wire.send(sock, {"op": "qdb", "cmd": cmd, **args})
        reply, fds = wire.recv(sock)
    wire.close_all(fds)
    if reply is None:
        raise OSError("qubesd hung up without an answer")
    return reply


def qrexec_client_vm(argv: list[str]) -> int:
    """``qrexec-client-vm TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]``."""
    if len(argv) < 2 or argv[0].startswith("-"):
        print("usage: qrexec-client-vm TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]",
              file=sys.stderr)
        return 2
    target, service = argv[0], argv[1]
    request = {"op": "call", "target": target, "service": service}
    if len(argv) == 2:
        return calls.call(_qubesd, request)
    # The local program talks to the service: its stdout is the service's stdin.
    to_remote_r, to_remote_w = os.pipe()
    from_remote_r, from_remote_w = os.pipe()
    local = subprocess.Popen(argv[2:], stdin=from_remote_r, stdout=to_remote_w)
    os.close(from_remote_r)
    os.close(to_remote_w)
    try:
        code = calls.call(_qubesd, request, stdin=to_remote_r, stdout=from_remote_w)
    finally:
        os.close(to_remote_r)
        os.close(from_remote_w)
    local.wait()
    return code


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def qubesdb_tool(name: str, argv: list[str]) -> int:
    """``qubesdb-read``, ``-write``, ``-rm``, ``-list`` and ``-multiread``."""
    try:
        if name == "qubesdb-read":
            default = None
            if argv[:1] == ["-d"] and len(argv) >= 2:
                default, argv = argv[1], argv[2:]
            if not argv:
                return _fail("usage: qubesdb-read [-d DEFAULT] PATH...")
            status = 0
            for path in argv:
                reply = qdb("read", path=path)
                value = reply.get("value")
                if "error" in reply or value is None:
                    if default is None:
                        status = _fail(f"Failed to read {path}")
                        continue
                    value = default
                print(value)
            return status
        if name == "qubesdb-write":
            if not argv or len(argv) % 2:
                return _fail("usage: qubesdb-write PATH VALUE [PATH VALUE]...")
            for path, value in zip(argv[::2], argv[1::2], strict=True):
                reply = qdb("write", path=path, value=value)
                if "error" in reply:
                    return _fail(f"Failed to write {path}: {reply['error']}")
            return 0
        if name == "qubesdb-rm":
            for path in argv:
                reply = qdb("rm", path=path)
                if "error" in reply:
                    return _fail(f"Failed to remove {path}: {reply['error']}")
            return 0 if argv else _fail("usage: qubesdb-rm PATH...")
        if name in ("qubesdb-list", "qubesdb-multiread"):
            prefix = argv[0] if argv else "/"
            reply = qdb("multiread", path=prefix)
            if "error" in reply:
                return _fail(reply["error"])
            for key, value in sorted(reply.get("entries", {}).items()):
                rest = key[len(prefix):] if key.startswith(prefix) else key
                print(rest if name == "qubesdb-list" else f"{rest} = {value}")
            return 0
    except (OSError, wire.WireError) as error:
        return _fail(f"{name}: cannot reach qubesd: {error}")
    return _fail(f"unknown QubesDB tool {name}")


def qvm_features_request(argv: list[str]) -> int:
    """``qvm-features-request KEY=VALUE... [--commit]`` (``KEY=`` removes)."""
    commit = "--commit" in argv
    for item in (a for a in argv if a != "--commit"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _fail(f"qvm-features-request: expected KEY=VALUE, got {item!r}")
        cmd = {"cmd": "write", "path": FEATURES_PREFIX + key, "value": value} if value \
            else {"cmd": "rm", "path": FEATURES_PREFIX + key}
        try:
            reply = qdb(**cmd)
        except (OSError, wire.WireError) as error:
            return _fail(f"qvm-features-request: cannot reach qubesd: {error}")
        if "error" in reply:
            return _fail(f"qvm-features-request: {key}: {reply['error']}")
    if commit:
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            return calls.call(_qubesd, {"op": "call", "target": "dom0",
                                        "service": "qubes.FeaturesRequest"}, stdin=null)
        finally:
            os.close(null)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch on the name the program was called by."""
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0])
    if name == "qrexec-client-vm":
        return qrexec_client_vm(argv[1:])
    if name.startswith("qubesdb-"):
        return qubesdb_tool(name, argv[1:])
    if name == "qvm-features-request":
        return qvm_features_request(argv[1:])
    return _fail(f"unknown tool {name}")


if __name__ == "__main__":
    sys.exit(main())
