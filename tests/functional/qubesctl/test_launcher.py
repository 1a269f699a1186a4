"""salt-ssh's launcher in the management DispVM: Salt's terminal reads in large pieces.

The launcher is run against the project's own Salt (the version the templates get):
a process that printed 4000 bytes and exited is read in one pass, not 1 KiB per pass.
"""

from __future__ import annotations

import io
import sys
import tarfile

import pytest

from qubes_core.qubesctl import dispvm
from qubes_core.qubesctl.targets import Target
from tests.support import wait_until

OUTPUT = 4000


@pytest.fixture
def salt_vt(monkeypatch: pytest.MonkeyPatch):
    import salt.utils.vt

    # what the launcher replaces is put back after the test
    monkeypatch.setattr(salt.utils.vt.Terminal, "recv", salt.utils.vt.Terminal.recv)
    monkeypatch.setattr(salt.utils.vt, "time", salt.utils.vt.time)
    return salt.utils.vt


def first_read(vt) -> str:
    """What one pass of Salt's terminal reads from a process that printed and exited."""
    script = f"import sys; sys.stdout.write('x' * {OUTPUT}); sys.stdout.flush()"
    term = vt.Terminal([sys.executable, "-c", script], stream_stdout=False,
                       stream_stderr=False)
    try:
        wait_until(lambda: not term.isalive(), what="the printing process's exit")
        stdout, _ = term.recv()
        return stdout or ""
    finally:
        term.close(terminate=True, kill=True)


def test_salt_terminal_reads_what_is_there_in_one_pass(salt_vt):
    assert len(first_read(salt_vt)) == 1024  # Salt's own pace: 1 KiB per pass
    launcher: dict[str, object] = {"__name__": "salt_ssh_launcher"}  # not __main__: no run
    exec(compile(dispvm.SALT_SSH_LAUNCHER, "salt_ssh.py", "exec"), launcher)
    launcher["quicken"]()  # type: ignore[operator]
    assert first_read(salt_vt) == "x" * OUTPUT


def test_the_bundle_runs_salt_ssh_through_the_launcher():
    data = dispvm.bundle(Target("work", "AppVM"), {"file_roots": {}})
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        run = archive.extractfile("run").read().decode()  # type: ignore[union-attr]
        launcher = archive.extractfile("salt_ssh.py").read().decode()  # type: ignore[union-attr]
    assert launcher == dispvm.SALT_SSH_LAUNCHER
    assert '"$here/salt_ssh.py"' in run
