"""qubesd-query-fast: qubesd-query for scripts, with nothing to import but ``socket``.

Same arguments as qubesd-query (``[-c PATH] [-e] [--fail] SRC METHOD DEST [ARG]``)
but it never starts a qubesd. The socket is ``-c PATH``, else the one of
``$QUBES_BASE_DIR``, else the production one. Start-up cost is the point:
keep this module free of imports beyond ``os``, ``sys`` and ``socket``.
"""

import os
import socket
import sys

USAGE = "usage: qubesd-query-fast [-c PATH] [-e] [--fail] SRC METHOD DEST [ARG]\n"


def _socket_path(explicit):
    if explicit:
        return explicit
    base = os.environ.get("QUBES_BASE_DIR")
    if base:
        return os.path.join(os.path.abspath(base), "run", "qubesd.sock")
    return "/var/run/qubesd.sock"


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    path, empty, fail, positional = None, False, False, []
    while args:
        item = args.pop(0)
        if item in ("-c", "--connect") and args:
            path = args.pop(0)
        elif item in ("-e", "--empty"):
            empty = True
        elif item == "--fail":
            fail = True
        elif item.startswith("-") and item != "-":
            sys.stderr.write(USAGE)
            return 2
        else:
            positional.append(item)
    if len(positional) not in (3, 4):
        sys.stderr.write(USAGE)
        return 2
    src, method, dest = positional[:3]
    arg = positional[3] if len(positional) == 4 else ""
    target = "keyword adminvm" if dest in ("dom0", "@adminvm") else "name " + dest
    header = (method + ("+" + arg if arg else "") + " " + src + " " + target).encode()
    payload = b"" if empty else sys.stdin.buffer.read()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(_socket_path(path))
    except OSError as err:
        sys.stderr.write(f"qubesd-query-fast: cannot connect: {err.strerror}\n")
        return 1
    sock.sendall(header + b"\0" + payload)
    sock.shutdown(socket.SHUT_WR)
    out = sys.stdout.buffer
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        if not fail:
            out.write(chunk)
            out.flush()
        else:
            chunks.append(chunk)
    sock.close()
    if not fail:
        return 0
    data = b"".join(chunks)
    if data.startswith(b"0\0"):
        out.write(data[2:])
        return 0
    if data.startswith(b"2\0"):
        parts = data[2:].split(b"\0")
        message = parts[2] if len(parts) > 2 else b""
        sys.stderr.write(parts[0].decode("ascii", "replace") + ": "
                         + message.decode("utf-8", "replace") + "\n")
        return 1
    if data.startswith(b"1\0"):
        out.write(data)
        return 0
    sys.stderr.write("qubesd-query-fast: no reply (call refused or malformed)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
