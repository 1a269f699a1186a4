"""An event loop whose clock leaves out the time its thread waited for a CPU.

asyncio's debug mode reports a callback as slow when ``loop.time()`` advanced by
more than ``slow_callback_duration`` while it ran. On a busy machine the plain
clock also counts the time the kernel left the thread waiting for a CPU, so a
callback that does nothing wrong is reported because other processes had the
CPUs. This clock subtracts that wait (``run_delay`` in the thread's schedstat),
so what is reported is what the callback itself did: computing, or blocking in a
system call (a disk write, a libvirt call), which is what must not happen on the
loop. Timers keep their meaning: the thread accrues no wait while it sleeps in
the selector. Reading the clock costs a read of /proc: for tests only (qubesd's
``--slow-callback-ms``).
"""

from __future__ import annotations

import asyncio
import os
import time

SCHEDSTAT = "/proc/thread-self/schedstat"


class CpuWaitFreeLoop(asyncio.SelectorEventLoop):
    """A selector loop, made and run in one thread, clocked without CPU waits."""

    def __init__(self) -> None:
        super().__init__()
        # Opened here, in the thread that runs the loop: the file is that thread's.
        self._schedstat = os.open(SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)

    def time(self) -> float:
        """Monotonic seconds, less the time this thread waited for a CPU."""
        waited_ns = int(os.pread(self._schedstat, 64, 0).split()[1])
        return time.monotonic() - waited_ns / 1e9

    def close(self) -> None:
        super().close()
        if self._schedstat >= 0:
            os.close(self._schedstat)
            self._schedstat = -1
