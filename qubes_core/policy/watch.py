"""The loaded policy of one installation, reloaded when its files change.

The kernel tells us of every change (inotify on each directory of the tree and
on the directory of each file included from outside it), so an edit is in force
as soon as it is written, without a restart and without polling. What changed is
then found by comparing (inode, size, mtime) of the whole tree with the last
load: one reload covers a burst of events, and an event that changed nothing
(an editor's swap file) reloads nothing. While the tree does not parse, every
call is denied with the error that says which file and line is wrong; the
previous policy is not kept, since the admin may be revoking something.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from asyncinotify import Inotify, Mask, Watch

from qubes_core.policy.evaluate import Decision, Policy, Request
from qubes_core.policy.parser import PolicyParser
from qubes_core.policy.rules import PolicySyntaxError
from qubes_core.policy.tokens import SystemInfo

log = logging.getLogger("qubes.policy")

# What is watched in each directory: anything that can change what a file reads.
WATCH_MASK = (Mask.CREATE | Mask.DELETE | Mask.MODIFY | Mask.CLOSE_WRITE | Mask.ATTRIB
              | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF
              | Mask.ONLYDIR)

Signature = tuple[tuple[str, int, int, int], ...]


def tree_signature(roots: list[Path], extra: list[Path]) -> Signature:
    """(path, inode, size, mtime) of every file and directory under ``roots`` and in ``extra``."""
    seen: dict[str, tuple[str, int, int, int]] = {}

    def add(path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            seen[path] = (path, -1, -1, -1)
            return
        seen[path] = (path, st.st_ino, st.st_size, st.st_mtime_ns)

    for root in roots:
        add(str(root))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*dirnames, *sorted(filenames)]:
                add(os.path.join(dirpath, name))
    for path in extra:
        if str(path) not in seen:
            add(str(path))
    return tuple(sorted(seen.values()))


class PolicyWatcher:
    """Holds the current policy of a policy directory (and the older per-service one)."""

    def __init__(self, policy_dir: Path, legacy_dir: Path | None = None):
        self.policy_dir = Path(policy_dir)
        self.legacy_dir = Path(legacy_dir) if legacy_dir is not None else None
        self.policy: Policy | None = None
        self.error: PolicySyntaxError | None = None
        self.generation = 0
        self._signature: Signature | None = None
        self._files: list[Path] = []
        self._task: asyncio.Task[None] | None = None

    def _roots(self) -> list[Path]:
        roots = [self.policy_dir]
        if self.legacy_dir is not None:
            roots.append(self.legacy_dir)
        return roots

    def reload(self) -> bool:
        """Parse the tree now; return whether it is valid."""
        before = tree_signature(self._roots(), [])
        parser = PolicyParser(self.policy_dir, self.legacy_dir)
        try:
            parsed = parser.load()
        except PolicySyntaxError as err:
            self.policy, self.error = None, err
            log.error("policy is invalid, denying every call until it is fixed: %s", err)
        else:
            self.policy, self.error = Policy(parsed.rules, parsed.files), None
            log.info("policy loaded from %s: %d rules", self.policy_dir, len(parsed.rules))
        self._files = list(parser.result.files)
        self._signature = tree_signature(self._roots(), self._files)
        if tree_signature(self._roots(), []) != before:
            # Changed while being read: make sure the next poll reads it again.
            self._signature = None
        self.generation += 1
        return self.error is None

    def changed(self) -> bool:
        return self._signature != tree_signature(self._roots(), self._files)

    def poll(self) -> bool:
        """Reload if anything changed; return whether it did."""
        if self._signature is not None and not self.changed():
            return False
        self.reload()
        return True

    def evaluate(self, request: Request, system: SystemInfo) -> Decision:
        if self.policy is None:
            reason = f"policy is invalid: {self.error}" if self.error else "no policy loaded"
            return Decision("deny", reason, notify=True)
        return self.policy.evaluate(request, system)

    # --- watching ----------------------------------------------------------

    def watched_dirs(self) -> set[Path]:
        """Every directory whose entries can change the policy: each directory of the
        trees, the directory of each file read from elsewhere, and for a tree that does
        not exist (yet) the nearest directory above it that does."""
        wanted: set[Path] = set()
        for root in self._roots():
            if root.is_dir():
                wanted.add(root)
                for dirpath, dirnames, _ in os.walk(root):
                    wanted.update(Path(dirpath) / name for name in dirnames)
            else:
                wanted.add(_existing_parent(root))
        wanted.update(_existing_parent(path) for path in self._files)
        return wanted

    def _rewatch(self, inotify: Inotify, watches: dict[Path, Watch]) -> None:
        """Watch exactly :meth:`watched_dirs` (directories come and go with edits)."""
        wanted = self.watched_dirs()
        for path in set(watches) - wanted:
            with contextlib.suppress(OSError, KeyError):
                inotify.rm_watch(watches.pop(path))
        for path in wanted - set(watches):
            try:
                watches[path] = inotify.add_watch(path, WATCH_MASK)
            except OSError as err:  # gone meanwhile: its parent's event brings us back
                log.debug("cannot watch %s: %s", path, err)

    async def _run(self) -> None:
        with Inotify() as inotify:
            watches: dict[Path, Watch] = {}
            self._rewatch(inotify, watches)
            self.poll()  # what changed before the watches were in place
            async for event in inotify:
                if event.mask & Mask.IGNORED:
                    watches = {path: watch for path, watch in watches.items()
                               if watch is not event.watch}
                try:
                    if self.poll() or event.mask & (Mask.CREATE | Mask.MOVED_TO
                                                    | Mask.DELETE_SELF | Mask.IGNORED):
                        self._rewatch(inotify, watches)
                except Exception:  # the watcher must survive anything the disk does
                    log.exception("cannot check the policy directory %s", self.policy_dir)

    def start(self) -> None:
        """Load now and reload on every change, in the running event loop, until
        :meth:`stop`."""
        self.reload()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="policy-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _existing_parent(path: Path) -> Path:
    """``path``'s directory, or the nearest one above it that exists."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    return parent
