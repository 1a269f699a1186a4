"""The temporary qrexec policy lines that let a management DispVM reach its target.

Invariant: a line exists only while the qubesctl run that wrote it is alive.
Lines live in ``POLICY_DIR/30-qubesctl-salt.policy``, in one block per DispVM
headed by a comment naming the run (pid and process start time, so a reused
pid is not mistaken for the run) and the DispVM. Every change to the file is
made under an exclusive lock and written atomically (temporary file, fsync,
rename), so concurrent runs and the policy reader never see half a file. A
run removes its blocks when a target is done, when it is interrupted (SIGINT,
SIGTERM) and on exit; a run killed with SIGKILL leaves blocks whose owner is
gone, and the next run removes them (and reports the DispVMs they name, which
it then destroys) before it adds any of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qubes_core.fsutil import fsync_dir

POLICY_FILE = "30-qubesctl-salt.policy"
SERVICES = ("qubes.Filecopy", "qubes.VMShell", "qubes.VMRootShell")
HEADER = ("# Temporary lines of running qubesctl processes (one block per management\n"
          "# DispVM); each run removes its own, the next run removes those of dead runs.\n")
BLOCK_RE = re.compile(r"^# qubesctl pid=(\d+) start=(\d+) dispvm=(\S+) target=(\S+)$")


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of process ``pid``, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class Block:
    """The lines of one DispVM → target grant, and the run that owns them."""

    pid: int
    start: int
    dispvm: str
    target: str

    def text(self) -> str:
        lines = [f"# qubesctl pid={self.pid} start={self.start} dispvm={self.dispvm} "
                 f"target={self.target}"]
        lines += [f"{service} * {self.dispvm} {self.target} allow user=root"
                  for service in SERVICES]
        return "\n".join(lines) + "\n"

    def owner_alive(self) -> bool:
        return process_start(self.pid) == self.start


class PolicyGrants:
    """The policy file of one installation's temporary lines, and the lock that guards it."""

    def __init__(self, policy_dir: Path, lock_dir: Path):
        self.path = Path(policy_dir) / POLICY_FILE
        self.lock_path = Path(lock_dir) / "qubesctl-policy.lock"
        self._thread_lock = threading.Lock()
        self.pid = os.getpid()
        start = process_start(self.pid)
        assert start is not None
        self.start = start

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive lock of the policy file (a file lock between processes, and
        a thread lock between this run's targets: a process's file locks are shared by all
        of its threads)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.lock_path, "a") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            yield

    def read(self) -> list[Block]:
        """The blocks in the file (lines outside a block are not ours and are dropped)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        blocks = []
        for line in text.splitlines():
            match = BLOCK_RE.match(line)
            if match:
                pid, start, dispvm, target = match.groups()
                blocks.append(Block(int(pid), int(start), dispvm, target))
        return blocks

    def _write(self, blocks: list[Block]) -> None:
        if not blocks:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
                fsync_dir(self.path.parent)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{POLICY_FILE}.{self.pid}")
        with open(temp, "w") as file:
            file.write(HEADER + "".join(block.text() for block in blocks))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, self.path)
        fsync_dir(self.path.parent)

    def sweep(self) -> list[Block]:
        """Remove the blocks of runs that are gone; those blocks (their DispVMs to destroy)."""
        with self.locked():
            blocks = self.read()
            dead = [b for b in blocks if not b.owner_alive()]
            if dead:
                self._write([b for b in blocks if b not in dead])
            return dead

    def grant(self, dispvm: str, target: str) -> Block:
        """Add the lines that let ``dispvm`` call ``target``'s shells as root."""
        block = Block(self.pid, self.start, dispvm, target)
        with self.locked():
            blocks = [b for b in self.read() if b != block]
            self._write([*blocks, block])
        return block

    def revoke(self, block: Block) -> None:
        """Remove one block (nothing when it is already gone)."""
        with self.locked():
            blocks = self.read()
            if block in blocks:
                self._write([b for b in blocks if b != block])

    def revoke_all(self) -> None:
        """Remove every block of this run."""
        with self.locked():
            blocks = self.read()
            mine = [b for b in blocks if b.pid == self.pid and b.start == self.start]
            if mine:
                self._write([b for b in blocks if b not in mine])
