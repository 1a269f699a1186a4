"""qubesd-query-fast: qubesd-query for scripts, where process start-up is the cost.

Same arguments as qubesd-query (``[-c PATH] [-e] [--fail] SRC METHOD DEST [ARG]``)
but it never starts a qubesd. The socket is ``-c PATH``, else the one of
``$QUBES_BASE_DIR``, else the production one.

setup.py installs this file, unchanged, as the script ``qubesd-query-fast`` run
by the installing interpreter with ``-I -S``: no ``site`` (whose start-up,
with the editable-install finder, costs more than the call), no environment.
So it must stand alone: no import from this project, only ``os``, ``sys`` and
``_socket``, the C module under ``socket`` (importing ``socket`` itself pulls in
enum and selectors: ~6 ms, as much as the interpreter's own start-up).
"""

import _socket
import os
import sys

USAGE = "usage: qubesd-query-fast [-c PATH] [-e] [--fail] SRC METHOD DEST [ARG]\n"
PROGRAM = "qubesd-query-fast"


def socket_path(explicit):
    """``-c PATH``, else the socket of $QUBES_BASE_DIR, else the production one."""
    if explicit:
        return explicit
    base = os.environ.get("QUBES_BASE_DIR")
    if base:
        return os.path.join(os.path.abspath(base), "run", "qubesd.sock")
    return "/var/run/qubesd.sock"


def parse_args(args):
    """(path, empty, fail, src, method, dest, arg), or None for a usage error."""
    path, empty, fail, positional = None, False, False, []
    args = list(args)
    while args:
        item = args.pop(0)
        if item in ("-c", "--connect") and args:
            path = args.pop(0)
        elif item in ("-e", "--empty"):
            empty = True
        elif item == "--fail":
            fail = True
        elif item.startswith("-") and item != "-":
            return None
        else:
            positional.append(item)
    if len(positional) not in (3, 4):
        return None
    src, method, dest = positional[:3]
    arg = positional[3] if len(positional) == 4 else ""
    return path, empty, fail, src, method, dest, arg


def request_header(src, method, dest, arg):
    """The request line as ``protocol.encode_request`` builds it, kept here to stand alone."""
    target = "keyword adminvm" if dest in ("dom0", "@adminvm") else "name " + dest
    return (method + ("+" + arg if arg else "") + " " + src + " " + target).encode()


def report_exception(data, err):
    """Print a whole exception reply as ``TYPE: message``."""
    parts = data[2:].split(b"\0")
    message = parts[2] if len(parts) > 2 else b""
    err.write(parts[0].decode("ascii", "replace") + ": "
              + message.decode("utf-8", "replace") + "\n")


def copy_reply(recv, fail, out, err):
    """Copy the reply to ``out`` as it comes (events stream); the exit code.

    With ``fail`` the ``0\\0`` of a success reply is left out and an exception
    reply goes to ``err`` (exit 1).
    """
    head = b""
    while len(head) < 2:
        chunk = recv(65536)
        if not chunk:
            if not head:
                err.write(PROGRAM + ": no reply (call refused or malformed)\n")
                return 2
            break
        head += chunk
    if fail and head.startswith(b"2\0"):
        chunks = [head]
        while chunk := recv(65536):
            chunks.append(chunk)
        report_exception(b"".join(chunks), err)
        return 1
    if fail and head.startswith(b"0\0"):
        head = head[2:]
    out.write(head)
    out.flush()
    while chunk := recv(65536):
        out.write(chunk)
        out.flush()
    return 0


def main(argv=None):
    """One call, payload from stdin unless ``-e``; never starts a qubesd, so a script pays
    only for the interpreter and the call.
    """
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        sys.stderr.write(USAGE)
        return 2
    path, empty, fail, src, method, dest, arg = parsed
    payload = b"" if empty else sys.stdin.buffer.read()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(socket_path(path))
    except OSError as error:
        sys.stderr.write(f"{PROGRAM}: cannot connect: {error.strerror}\n")
        sock.close()
        return 1
    try:
        sock.sendall(request_header(src, method, dest, arg) + b"\0" + payload)
        sock.shutdown(_socket.SHUT_WR)
    except OSError:
        pass  # qubesd may close early (a refused call); read what it sent
    try:
        return copy_reply(sock.recv, fail, sys.stdout.buffer, sys.stderr)
    except ConnectionResetError:
        sys.stderr.write(PROGRAM + ": connection reset by qubesd\n")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
