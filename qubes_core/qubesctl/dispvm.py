"""One target configured from its own management DispVM, with salt-ssh over qrexec.

For each target: the temporary policy lines first (:mod:`grants`), then a
DispVM ``disp-mgmt-TARGET`` of the target's ``management_dispvm``, without
network, ``auto_cleanup`` on. It receives, over dom0's ``qubes.VMShell`` call,
a bundle of the Salt tree, the target's own rendered pillar (no other VM's),
a salt-ssh configuration whose roster names only the target, and stand-ins
for ``ssh``/``scp``/``ssh-keygen`` that carry salt-ssh's shell script to
``qrexec-client-vm TARGET qubes.VMRootShell``. salt-ssh is the one installed in
the DispVM's template; the target needs only Python. Afterwards, in every case:
the DispVM is killed (and so removed), the policy lines are removed, and a
target that was not running before is shut down.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from qubes_core import exc
from qubes_core.paths import Paths
from qubes_core.qubesctl import dom0, report
from qubes_core.qubesctl.grants import Block, PolicyGrants
from qubes_core.qubesctl.targets import Target

if TYPE_CHECKING:
    from qubes_core.client.app import Qubes

PREFIX = "disp-mgmt-"
MAX_NAME = 31
BUNDLE = "/tmp/qubesctl"
NO_CONNECTOR = 127
REMOVAL_TIMEOUT = 60.0
# salt-ssh's cache in the management DispVM. A DispVM's root starts as its template's, so
# a thin built there once (prebuild_thin) is not built and compressed again per target.
THIN_CACHE = "/var/cache/salt/qubesctl"
# The thin as qubesctl sends it to the target: uncompressed (a pipe between two VMs is
# cheaper than gunzip), beside the compressed one salt-ssh keeps and checksums.
THIN_TAR = THIN_CACHE + "/thin/thin.tar"
# Where the thin is unpacked in the target: /run is root's alone (no user of the target can
# put files there first) and volatile (nothing of it stays in a template's root).
TARGET_THIN_DIR = "/run/qubesctl-salt"
# Run in the management template by prebuild_thin: salt-ssh's thin, with its modules
# compiled for the template's Python (a target with the same Python, as a template of the
# same release, then imports Salt without compiling it, twice per run: about a second),
# compressed for salt-ssh and uncompressed for qubesctl.
THIN_BUILDER = f"""
import compileall, os, py_compile, tarfile, tempfile
import salt.utils.thin
thin = salt.utils.thin.gen_thin({THIN_CACHE!r})
with tempfile.TemporaryDirectory() as work:
    with tarfile.open(thin) as archive:
        archive.extractall(work)
    compileall.compile_dir(work, quiet=1, workers=0,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    for path, mode in ((thin, "w:gz"), ({THIN_TAR!r}, "w")):
        with tarfile.open(path + ".new", mode) as archive:
            for name in sorted(os.listdir(work)):
                archive.add(os.path.join(work, name), name)
        os.replace(path + ".new", path)
print(thin)
"""
PREBUILD = (
    "for py in /opt/salt/bin/python3 /usr/bin/python3; do "
    "if $py -c 'import salt.utils.thin' 2>/dev/null; then exec $py -c \"$0\"; fi; done; "
    "echo 'no Salt in this template' >&2; exit 127")
FIX_MGMT_DVM = ("set one (qvm-prefs TARGET management_dispvm NAME), or create the default "
                "with its formula: qubesctl top.enable qvm.default-mgmt-dvm && qubesctl "
                "state.highstate")


def dispvm_name(target: str) -> str:
    """``disp-mgmt-TARGET``, at most 31 characters (a long name ends in a short hash)."""
    name = PREFIX + target
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(target.encode()).hexdigest()[:6]
    return name[:MAX_NAME - 7] + "-" + digest


# The stand-ins run with the DispVM's python3. salt-ssh runs ssh under a pty: they never
# read their own stdin, take salt-ssh's script from their arguments and feed it to bash
# behind qubes.VMRootShell (bash, not dash: dash reads ahead and cuts a long script).
SSH_STANDIN = r'''#!/usr/bin/python3 -IS
"""ssh and scp for salt-ssh over qrexec: the remote command goes to qubes.VMRootShell."""
import fcntl, os, subprocess, sys

WITH_VALUE = set("BbcDEeFIiJLlmOopQRSWw")
# salt-ssh's shim only checks that the target has an scp before it asks for the thin,
# which then comes through our scp: a placeholder, in the target's volatile /tmp.
PREAMBLE = ("d=/tmp/.qubesctl-ssh; mkdir -p $d && printf '#!/bin/sh\\nexit 1\\n' > $d/scp"
            " && chmod 755 $d/scp && export PATH=\"$d:$PATH\"\n")


def parse(argv, ssh):
    """ssh: [host, command] (options may follow the host); scp: [sources..., dest]."""
    found, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if ssh and len(found) == 1 and not arg.startswith("-"):
            return found + [" ".join(argv[i:])]  # as ssh does: the words, joined by spaces
        if arg.startswith("-") and len(arg) > 1:
            letters = arg[1:]
            for n, letter in enumerate(letters):
                if letter in WITH_VALUE:
                    i += n == len(letters) - 1  # the value is the next word
                    break
        else:
            found.append(arg)
        i += 1
    return found


def thin_deployed():
    """Wait until the run script has copied the thin to the target (it holds the lock)."""
    lock = os.environ.get("QUBESCTL_THIN_LOCK")
    if lock:
        with open(lock) as file:
            fcntl.flock(file, fcntl.LOCK_SH)


def shell(host, text, data=b""):
    thin_deployed()
    host = host.rsplit("@", 1)[-1].strip("[]")
    proc = subprocess.Popen(["qrexec-client-vm", host, "qubes.VMRootShell"],
                            stdin=subprocess.PIPE)
    proc.stdin.write(text.encode() + b"\n" + data)
    proc.stdin.close()
    return proc.wait()


def main():
    if os.path.basename(sys.argv[0]) == "scp":
        *sources, dest = parse(sys.argv[1:], ssh=False)
        host, _, path = dest.partition(":")
        quoted = "'" + path.replace("'", "'\\''") + "'"
        with open(sources[0], "rb") as file:
            return shell(host, f"exec cat > {quoted}", file.read())
    found = parse(sys.argv[1:], ssh=True)
    if not found:
        print("ssh: no host given", file=sys.stderr)
        return 255
    return shell(found[0], PREAMBLE + (found[1] if len(found) > 1 else "exit 0"))


sys.exit(main())
'''

RUN_SCRIPT = r'''#!/bin/bash
# Apply a Salt command to TARGET with salt-ssh over qrexec; JSON on stdout.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
target="$1"; shift
thin="@THIN@" thin_dir="@THIN_DIR@"
export PATH="$here/bin:/usr/local/bin:/usr/bin:/bin:/opt/salt/bin" HOME=/root
salt_ssh="$(command -v salt-ssh)" ||
  { echo "no salt-ssh in this DispVM's template" >&2; exit 127; }
# The thin goes to the target with a first call of our own, unpacked by the target's tar
# (salt-ssh would first ask, learn that it is missing, copy it, then unpack it with Python),
# while salt-ssh starts: the stand-ins wait until this call has released the lock. The
# policy lines were written just before this DispVM was created and qrexec may read them
# late: retry while the call is refused (126), at most 20 s. If this fails, salt-ssh
# copies the thin itself.
deploy="rm -rf $thin_dir && mkdir -m 700 $thin_dir && exec tar -xf - -C $thin_dir"
export QUBESCTL_THIN_LOCK="$here/thin.lock"
exec 9>"$QUBESCTL_THIN_LOCK"
flock 9
(
  for _ in $(seq 200); do
    { printf '%s\n' "$deploy"; cat "$thin"; } | qrexec-client-vm "$target" qubes.VMRootShell
    [ $? -ne 126 ] && break
    sleep 0.1
  done
) >/dev/null 2>&1 &
exec 9>&-
# salt-ssh's own interpreter (its #! line), through salt_ssh.py: read there why
exec $(sed -n '1s/^#!//p' "$salt_ssh") "$here/salt_ssh.py" -c "$here/conf" \
  --roster-file="$here/conf/roster" -w --ignore-host-keys --out=json --log-level=quiet \
  "$target" "$@"
'''

# Salt's terminal, through which salt-ssh talks to its ssh, has a slow pace for a local
# pipe: it reads 1 KiB per pass with 10 ms between passes (100 KB/s, and each remote call
# returns 50 KB and more: the minion's options and grains, then the state results), and it
# pauses 0.1 s when it closes each call, after the ssh has exited. That was about 1.3 s of
# waiting per target.
SALT_SSH_LAUNCHER = '''"""salt-ssh; its terminal reads 64 KiB per pass, closes without a pause."""
import time
import types

import salt.utils.vt


def quicken():
    recv = salt.utils.vt.Terminal.recv
    salt.utils.vt.Terminal.recv = lambda self, maxsize=None: recv(self, maxsize or 65536)
    # the terminal's only use of time: a 0.1 s sleep before each look at whether ssh exited
    salt.utils.vt.time = types.SimpleNamespace(sleep=lambda seconds: time.sleep(seconds / 20))


if __name__ == "__main__":
    from salt.scripts import salt_ssh

    quicken()
    salt_ssh()
'''


def master_config(opts: dict[str, Any], roots: dict[str, list[str]]) -> dict[str, Any]:
    """salt-ssh's configuration inside the DispVM: the bundle's trees, dom0's merge rules,
    and the cache in the template's file system, where a pre-built thin may wait."""
    root = f"{BUNDLE}/root"
    # root_dir "/": Salt prefixes every path option with root_dir, which would move the
    # cache (and so the template's pre-built thin) under the bundle, where no thin waits
    return {
        "root_dir": "/", "cachedir": THIN_CACHE, "pki_dir": f"{root}/pki",
        "sock_dir": f"{root}/sock", "log_file": f"{root}/master.log",
        "ssh_log_file": f"{root}/ssh.log", "pidfile": f"{root}/master.pid",
        "file_roots": roots, "pillar_roots": {"base": [f"{BUNDLE}/pillar"]},
        "top_file_merging_strategy": opts.get("top_file_merging_strategy", "merge"),
        "nodegroups": opts.get("nodegroups", {}), "state_verbose": True,
        "verify_env": False, "ssh_minion_opts": {"retcode_passthrough": True},
    }


def bundle(target: Target, opts: dict[str, Any]) -> bytes:
    """The tar archive a DispVM gets: Salt tree, this target's pillar, config, stand-ins."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:
        def add_text(name: str, text: str, mode: int = 0o644) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            archive.addfile(info, io.BytesIO(data))

        roots: dict[str, list[str]] = {}
        for env, paths in (opts.get("file_roots") or {}).items():
            for index, path in enumerate(paths):
                if not Path(path).is_dir():
                    continue
                arcname = f"roots/{env}/{index}"
                archive.add(path, arcname, filter=_public)
                roots.setdefault(env, []).append(f"{BUNDLE}/{arcname}")
        add_text("pillar/top.sls", "base:\n  '*':\n    - qubesctl_target\n")
        add_text("pillar/qubesctl_target.sls",
                 "#!json\n" + json.dumps(target.pillar, default=str, sort_keys=True))
        add_text("conf/master", yaml.safe_dump(master_config(opts, roots)))
        add_text("conf/roster", yaml.safe_dump({target.name: {
            "host": target.name, "user": "root", "thin_dir": TARGET_THIN_DIR}}))
        add_text("bin/ssh", SSH_STANDIN, 0o755)
        add_text("bin/scp", SSH_STANDIN, 0o755)
        add_text("bin/ssh-keygen", "#!/bin/sh\nexit 0\n", 0o755)
        add_text("salt_ssh.py", SALT_SSH_LAUNCHER)
        run = RUN_SCRIPT.replace("@THIN@", THIN_TAR).replace("@THIN_DIR@", TARGET_THIN_DIR)
        add_text("run", run, 0o755)
    return buffer.getvalue()


def _public(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leave out Salt's caches and editor leftovers; files owned by root in the DispVM."""
    name = Path(info.name).name
    if name in ("__pycache__", ".git") or name.endswith((".pyc", "~")):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


class Session:
    """The DispVM side of one qubesctl run: grants, DispVMs, started targets, cleanup."""

    def __init__(self, paths: Paths, app: Qubes, opts: dict[str, Any], command: list[str],
                 salt_args: list[str]):
        self.paths = paths
        self.app = app
        self.opts = opts
        self.command = command
        self.salt_args = salt_args
        self.grants = PolicyGrants(paths.policy_dir, paths.run_dir)
        self.lock = threading.Lock()
        self.dispvms: set[str] = set()
        self.started: set[str] = set()
        self.closed = False
        self.inner_command: str | None = None  # instead of salt-ssh (the benchmark's baseline)

    # --- before and after the run ----------------------------------------------------

    def sweep(self) -> list[str]:
        """Remove what runs killed before us left: policy lines, then their DispVMs."""
        left = self.grants.sweep()
        for block in left:
            self.destroy(block.dispvm)
        return [block.dispvm for block in left]

    def close(self) -> None:
        """Destroy every DispVM of this run, remove its policy lines, shut down what it
        started (also when interrupted: each step goes on when another fails)."""
        with self.lock:
            self.closed = True
            dispvms, started = list(self.dispvms), list(self.started)
        for name in dispvms:
            with contextlib.suppress(Exception):
                self.destroy(name)
        self.grants.revoke_all()
        for name in started:
            with contextlib.suppress(Exception):
                self.shutdown(name)

    # --- one target ------------------------------------------------------------------

    def configure(self, target: Target, log: Path, pillar: Future[None] | None = None
                  ) -> tuple[report.Outcome, str]:
        """Run the command in ``target``; its outcome and salt-ssh's JSON output.

        ``pillar``, when given, renders ``target.pillar`` meanwhile: the VMs start first.
        """
        started = time.monotonic()
        outcome = report.Outcome(target.name, log=log)
        stdout, stderr, code = "", "", 1
        try:
            stdout, stderr, code = self._configure(target, pillar)
            report.settle(outcome, self.command[0], code, stdout)
            if code == NO_CONNECTOR:
                outcome.problems.append("the management DispVM's template has no salt-ssh "
                                        "(build it with qubes-template-build --with-salt)")
        except (exc.QubesException, OSError, ValueError) as error:
            outcome.exit_code = outcome.exit_code or 1
            outcome.problems.append(str(error))
            stderr += f"\nqubesctl: {error}\n"
        outcome.duration = time.monotonic() - started
        argv = ["salt-ssh", target.name, *self.salt_args, *self.command]
        dom0.write_log(log, argv, code, stdout, stderr, outcome)
        if not outcome.ok and outcome.problems and not stdout.strip():
            stdout = "\n".join(outcome.problems)
        return outcome, stdout

    def _configure(self, target: Target, pillar: Future[None] | None
                   ) -> tuple[str, str, int]:
        app = self.app
        vm = app.domains[target.name]
        mgmt = vm.management_dispvm
        if mgmt is None:
            raise exc.QubesValueError(f"{target.name} has no management_dispvm: "
                                      + FIX_MGMT_DVM.replace("TARGET", target.name))
        name = dispvm_name(target.name)
        block: Block | None = None
        # The target starts while the DispVM is made and started, and shuts down while the
        # DispVM is destroyed: the two VMs' starts and stops overlap.
        with ThreadPoolExecutor(max_workers=1) as beside:
            try:
                block = self.grants.grant(name, target.name)
                starting = None
                if not vm.is_running():
                    self._track(self.started, target.name)
                    starting = beside.submit(vm.start)
                if name in app.domains:  # left by a run that died after its policy sweep
                    self.destroy(name)
                self._create(name, str(mgmt))
                if starting is not None:
                    starting.result()
                if pillar is not None:
                    pillar.result()
                return self._run_inside(name, target)
            finally:
                if target.name in self.started:
                    # after the start above, if any, has returned (one worker, in order)
                    beside.submit(self.shutdown, target.name)
                with contextlib.suppress(Exception):
                    self.destroy(name)
                if block is not None:
                    self.grants.revoke(block)

    def _track(self, where: set[str], name: str) -> None:
        with self.lock:
            if self.closed:
                raise exc.QubesException("qubesctl is stopping")
            where.add(name)

    def _create(self, name: str, mgmt: str) -> None:
        app = self.app
        self._track(self.dispvms, name)
        dispvm = app.add_new_vm("DispVM", name, str(app.domains[mgmt].label), template=mgmt)
        dispvm.netvm = None
        dispvm.auto_cleanup = True
        dispvm.features["internal"] = "1"
        dispvm.features["gui"] = ""
        dispvm.start()

    def _run_inside(self, name: str, target: Target) -> tuple[str, str, int]:
        data = bundle(target, self.opts)
        inner = self.inner_command or (
            f"exec {BUNDLE}/run {target.name} "
            + " ".join(_quote(word) for word in [*self.salt_args, *self.command]))
        line = f"rm -rf {BUNDLE} && mkdir -p {BUNDLE} && cd {BUNDLE} && tar -xf - && {inner}"
        argv = [sys.executable, "-m", "qubes_core.cli.qvm_run", "--pass-io", "--no-autostart",
                "--user", "root"]
        if not self.paths.production:
            argv += ["--base-dir", str(self.paths.base_dir)]
        argv += [name, line]
        result = subprocess.run(argv, input=data, capture_output=True, check=False)
        return (result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"),
                result.returncode)

    # --- VMs -------------------------------------------------------------------------

    def destroy(self, name: str) -> None:
        """Kill a management DispVM (qubesd removes it: auto_cleanup) or remove a halted one,
        and wait until it is gone."""
        app = self.app
        if name in app.domains:
            vm = app.domains[name]
            with contextlib.suppress(exc.QubesException):
                if vm.is_halted():
                    app.remove_vm(name)
                else:
                    vm.kill()
            deadline = time.monotonic() + REMOVAL_TIMEOUT
            while name in app.domains:
                if time.monotonic() > deadline:
                    raise exc.QubesException(f"{name} is still there after being killed: "
                                             f"remove it with qvm-remove {name}")
                time.sleep(0.05)
        with self.lock:
            self.dispvms.discard(name)

    def shutdown(self, name: str) -> None:
        """Shut down a target this run started (and wait for it)."""
        vm = self.app.domains[name]
        if not vm.is_halted():
            vm.shutdown(wait=True)
        with self.lock:
            self.started.discard(name)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def prebuild_thin(paths: Paths, template: str) -> str:
    """Build salt-ssh's thin inside ``template`` (a management DispVM's template), then shut
    the template down if it was not running; the thin's path in it."""
    from qubes_core.client.app import Qubes

    with Qubes(None if paths.production else paths.base_dir) as app:
        was_running = app.domains[template].is_running()
        argv = [sys.executable, "-m", "qubes_core.cli.qvm_run", "--pass-io", "--user", "root"]
        if not paths.production:
            argv += ["--base-dir", str(paths.base_dir)]
        command = f"sh -c {_quote(PREBUILD)} {_quote(THIN_BUILDER)}"
        result = subprocess.run([*argv, template, command], capture_output=True, text=True,
                                check=False)
        if not was_running:
            app.domains[template].shutdown(wait=True)
    if result.returncode != 0:
        raise exc.QubesException(f"building salt-ssh's thin in {template} failed: "
                                 f"{result.stderr.strip() or result.returncode}")
    return result.stdout.strip()
