"""qubesd: the daemon that owns one installation and serves its Admin API.

It opens (and locks) qubes.xml, repairs what an unclean stop left behind
(DispVMs with ``auto_cleanup`` that no longer run are removed, and so are the
files of VMs whose creation qubes.xml never recorded), listens on the
admin, internal and misc sockets, and fires ``qubesd-start`` (with
``server=``) on the app once it serves, ``qubesd-stop`` before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from qubes_core import exc
from qubes_core.vm import dispvm

if TYPE_CHECKING:
    from qubes_core.app import Qubes
    from qubes_core.backend import Runtime
    from qubes_core.paths import Paths

log = logging.getLogger("qubes.qubesd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """qubesd's command line; ``--ready-fd`` (the embedded client waits on it),
    ``--save-each-write`` (the API benchmark's baseline) and ``--slow-callback-ms``
    (the tests' watch on the event loop) are hidden from ``--help``.
    """
    from qubes_core.backend import RUNTIME_NAMES

    parser = argparse.ArgumentParser(prog="qubesd", description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="installation directory (default: "
                        "$QUBES_BASE_DIR, else the production paths)")
    parser.add_argument("--runtime", choices=RUNTIME_NAMES, default=None,
                        help="what runs the VMs (default: xen where /proc/xen exists, "
                        "else libvirt's test driver)")
    parser.add_argument("--create", action="store_true",
                        help="create an empty installation if qubes.xml does not exist")
    parser.add_argument("--debug", action="store_true",
                        help="send tracebacks with exception replies; log debug messages")
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    # One save per write call instead of group commit: only to measure against.
    parser.add_argument("--save-each-write", action="store_true", help=argparse.SUPPRESS)
    # Tests: once serving, log (asyncio's debug mode) every callback that holds the loop
    # longer than this many milliseconds, time waiting for a CPU left out (loopclock).
    parser.add_argument("--slow-callback-ms", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def open_app(paths: Paths, runtime: Runtime, create: bool) -> Qubes:
    """Load (and lock) the installation's qubes.xml; with ``create``, make an empty one first
    if there is none.
    """
    from qubes_core.app import Qubes

    if create and not paths.qubes_xml.exists():
        paths.base_dir.mkdir(parents=True, exist_ok=True)
        log.info("creating %s", paths.qubes_xml)
        return Qubes.create_empty_store(paths.qubes_xml, runtime=runtime, setup_check="auto")
    return Qubes(paths.qubes_xml, runtime=runtime)


async def serve(args: argparse.Namespace) -> int:
    """Run qubesd until SIGTERM or SIGINT: load, clean up stale DispVMs, listen, tell the
    ready fd, then on a signal stop serving and release the runtime and qubes.xml.
    """
    from qubes_core.api.server import QubesdServer
    from qubes_core.backend import default_runtime_name, make_runtime
    from qubes_core.paths import resolve
    from qubes_core.vm import pending

    paths = resolve(args.base_dir)
    runtime = make_runtime(args.runtime or default_runtime_name())
    app = open_app(paths, runtime, args.create)
    try:
        runtime.bind(app)
        await pending.clean_up(app)
        await dispvm.remove_stale(app)
        server = QubesdServer(app, paths, debug=args.debug,
                              group_commit=not args.save_each_write)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await app.fire_event_async("qubesd-start", server=server)
        if args.slow_callback_ms is not None:
            loop.slow_callback_duration = args.slow_callback_ms / 1000
            loop.set_debug(True)
        log.info("qubesd serves %s (runtime %s)", paths.base_dir, runtime.name)
        if args.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
        await stop.wait()
        log.info("stopping")
        await app.fire_event_async("qubesd-stop")
        await server.stop()
    finally:
        with contextlib.suppress(Exception):
            runtime.close()
        app.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``qubesd`` command; a Qubes error at start (say, qubes.xml locked) exits 1 with
    its message.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="qubesd: %(levelname)s %(name)s: %(message)s")
    loop_factory = None
    if args.slow_callback_ms is not None:
        from qubes_core.loopclock import CpuWaitFreeLoop

        loop_factory = CpuWaitFreeLoop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(args))
    except exc.QubesException as err:
        print(f"qubesd: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
