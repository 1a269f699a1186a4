"""The policy is reloaded when its files change, without a restart."""

from __future__ import annotations

import os
from pathlib import Path

from qubes_core.policy import DomainInfo, FixedSystem, Request
from qubes_core.policy.watch import PolicyWatcher
from tests.support import wait_until_async

SYSTEM = FixedSystem([DomainInfo("dom0", "AdminVM"), DomainInfo("work", "AppVM"),
                      DomainInfo("vault", "AppVM")])
CALL = Request.parse("qubes.X", "work", "vault")


def _bump(path: Path, text: str) -> None:
    """Write ``text`` and move the mtime, as a slow editor would."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_poll_sees_edits_additions_and_removals(tmp_path: Path) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "50-a.policy").write_text("!include include/x\n")
    (tmp_path / "include" / "x").write_text("qubes.X * work vault deny\n")
    watcher = PolicyWatcher(tmp_path)
    assert watcher.reload()
    assert not watcher.poll()
    assert watcher.evaluate(CALL, SYSTEM).action == "deny"

    _bump(tmp_path / "include" / "x", "qubes.X * work vault allow\n")  # an included file
    assert watcher.poll()
    assert watcher.evaluate(CALL, SYSTEM).action == "allow"

    (tmp_path / "10-first.policy").write_text("qubes.X * work @anyvm deny\n")  # a new file
    assert watcher.poll()
    assert watcher.evaluate(CALL, SYSTEM).action == "deny"

    _bump(tmp_path / "10-first.policy", "qubes.X * work @anyvm allow bogus\n")  # broken
    assert watcher.poll()
    decision = watcher.evaluate(CALL, SYSTEM)
    assert decision.action == "deny" and "10-first.policy:1" in decision.reason

    (tmp_path / "10-first.policy").unlink()  # removed: back to the include
    assert watcher.poll()
    assert watcher.evaluate(CALL, SYSTEM).action == "allow"
    assert not watcher.poll()


def test_include_outside_the_directory_is_watched(tmp_path: Path) -> None:
    policy_dir, outside = tmp_path / "policy.d", tmp_path / "elsewhere"
    policy_dir.mkdir()
    outside.mkdir()
    (outside / "rules").write_text("qubes.X * work vault deny\n")
    (policy_dir / "50-a.policy").write_text(f"!include {outside / 'rules'}\n")
    watcher = PolicyWatcher(policy_dir)
    watcher.reload()
    assert watcher.evaluate(CALL, SYSTEM).action == "deny"
    _bump(outside / "rules", "qubes.X * work vault allow\n")
    assert watcher.poll()
    assert watcher.evaluate(CALL, SYSTEM).action == "allow"


async def test_an_edit_is_in_force_once_written(tmp_path: Path) -> None:
    """The kernel announces each change: the watcher reloads on it (nothing polls)."""
    (tmp_path / "50-a.policy").write_text("qubes.X * work vault deny\n")
    watcher = PolicyWatcher(tmp_path)
    watcher.start()
    try:
        assert watcher.evaluate(CALL, SYSTEM).action == "deny"
        loaded = watcher.generation
        _bump(tmp_path / "50-a.policy", "qubes.X * work vault allow\n")
        await wait_until_async(lambda: watcher.evaluate(CALL, SYSTEM).action == "allow",
                               what="the edit in force")
        # One more reload for a new directory and a file in it, read through an include.
        (tmp_path / "include").mkdir()
        await wait_until_async(lambda: tmp_path / "include" in watcher.watched_dirs())
        (tmp_path / "include" / "x").write_text("qubes.X * work vault deny\n")
        (tmp_path / "10-b.policy").write_text("!include include/x\n")
        await wait_until_async(lambda: watcher.evaluate(CALL, SYSTEM).action == "deny",
                               what="the new include in force")
        assert watcher.generation > loaded
    finally:
        await watcher.stop()

