"""The VM's init: what it does to the private volume at a first start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from qubes_core.agent.init import copy_tree


def describe(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode, owner, mtime and content or link target."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            body: object = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            body = path.read_bytes()
        else:
            body = None
        found[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(
            info.st_mode), info.st_uid, info.st_gid, info.st_mtime_ns, body)
    return found


def test_copy_tree_keeps_what_cp_a_keeps(tmp_path: Path) -> None:
    home = tmp_path / "home"
    user = home / "user"
    (user / ".config" / "deep").mkdir(parents=True)
    (user / ".bashrc").write_text("alias ll='ls -l'\n")
    (user / ".config" / "deep" / "secret").write_bytes(b"x" * 3_000_000)
    (user / ".config" / "deep" / "secret").chmod(0o600)
    (user / "link").symlink_to(".bashrc")
    (user / "dirlink").symlink_to(".config")
    os.mkfifo(user / "fifo")
    user.chmod(0o700)
    mine = (os.getuid(), os.getgid())
    for path in [user, *user.rglob("*")]:
        os.chown(path, 1000 if os.getuid() == 0 else mine[0],
                 1000 if os.getuid() == 0 else mine[1], follow_symlinks=False)
    os.utime(user / ".config", ns=(1, 123_000_000_000))

    copy_tree(str(home), str(tmp_path / "rw-home"))

    expected = describe(home)
    del expected["user/fifo"]  # neither a file, a link nor a directory: left out
    assert describe(tmp_path / "rw-home") == expected
    assert (tmp_path / "rw-home" / "user" / "dirlink").is_symlink()  # not followed
