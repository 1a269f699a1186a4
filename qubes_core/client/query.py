"""qubesd-query: send one raw Admin API call and print the reply.

Like the reference tool: ``qubesd-query [-e] [--fail] SRC METHOD DEST [ARG]``,
payload read from stdin unless ``-e``/``--empty``. Without ``--fail`` the reply
is printed as it comes, header byte included (``admin.Events`` streams until
interrupted). With ``--fail`` only the body of a success reply is printed; an
exception reply is printed to stderr as ``TYPE: message`` and exits 1. When no
qubesd listens for the installation (``--base-dir``/``$QUBES_BASE_DIR``), one
is started for the duration of the call unless ``--no-start`` is given.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import BinaryIO, TextIO

from qubes_core import protocol

EXIT_NO_REPLY = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """qubesd-query's command line, the reference tool's plus ``--base-dir`` and ``--no-start``."""
    parser = argparse.ArgumentParser(prog="qubesd-query",
                                     description="low-level qubesd call tool")
    parser.add_argument("--connect", "-c", metavar="PATH", dest="socket",
                        help="qubesd socket (default: the admin socket of the installation)")
    parser.add_argument("--base-dir", help="installation directory (default: "
                        "$QUBES_BASE_DIR, else the production paths)")
    parser.add_argument("--empty", "-e", dest="payload", action="store_false",
                        help="send an empty payload instead of reading stdin")
    parser.add_argument("--fail", action="store_true",
                        help="print only the body; exit 1 on an exception reply")
    parser.add_argument("--no-start", dest="start", action="store_false",
                        help="do not start a qubesd when none listens")
    parser.add_argument("src", metavar="SRC", help="source domain (dom0)")
    parser.add_argument("method", metavar="METHOD", help="method name")
    parser.add_argument("dest", metavar="DEST", help="destination domain (dom0 or a VM)")
    parser.add_argument("arg", metavar="ARG", nargs="?", default="", help="argument")
    return parser.parse_args(argv)


def run_call(sock_path: str, request: bytes, fail: bool, out: BinaryIO, err: TextIO) -> int:
    """Send ``request``, copy the reply to ``out``; return the exit code."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_path)
    except OSError as error:
        print(f"qubesd-query: cannot connect to {sock_path}: {error.strerror}",
              file=err)
        return 1
    with sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return copy_reply(sock, fail, out, err)


def copy_reply(sock: socket.socket, fail: bool, out: BinaryIO, err: TextIO) -> int:
    """Copy the reply to ``out`` as it comes (events stream); the exit code.

    With ``fail`` the ``0\\0`` of a success reply is left out and an exception reply
    goes to ``err`` as ``TYPE: message`` (exit 1); no reply at all exits 2.
    """
    write = out.write
    head = b""
    while len(head) < 2:
        chunk = sock.recv(65536)
        if not chunk:
            if not head:
                print("qubesd-query: qubesd closed the connection without a reply",
                      file=err)
                return EXIT_NO_REPLY
            break
        head += chunk
    if fail and head.startswith(protocol.EXCEPTION):
        data = head + _read_all(sock)
        reply = protocol.parse_exception(data[2:])
        print(f"{reply.type_name}: {reply.message}", file=err)
        return 1
    if fail and head.startswith(protocol.OK):
        head = head[2:]
    write(head)
    out.flush()  # type: ignore[attr-defined]
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return 0
        write(chunk)
        out.flush()  # type: ignore[attr-defined]


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str] | None = None) -> int:
    """Send one call, starting a qubesd for it when none listens (unless ``--no-start``)."""
    args = parse_args(argv)
    payload = sys.stdin.buffer.read() if args.payload else b""
    request = protocol.encode_request(args.method, args.src, args.dest, args.arg, payload)
    embedded = None
    sock_path = args.socket
    if sock_path is None:
        from qubes_core.client.embedded import EmbeddedQubesd, find_socket

        sock_path = str(find_socket(args.base_dir))
        if args.start:
            try:
                embedded = EmbeddedQubesd.start_if_needed(args.base_dir)
            except Exception as error:
                print(f"qubesd-query: {error}", file=sys.stderr)
                return 1
    try:
        return run_call(sock_path, request, args.fail, sys.stdout.buffer, sys.stderr)
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
