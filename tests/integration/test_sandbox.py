"""VMs that really run, end to end: qubesd on the sandbox runtime, bookworm and trixie."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from qubes_core import protocol
from qubes_core.paths import resolve
from tests.integration.conftest import BIN, Installation
from tests.integration.support import keeper_processes
from tests.support import wait_until

FLOOD = r"""
import socket, struct, sys, threading
sys.path.insert(0, "/usr/lib/qubes-sandbox")
from qubes_agent import wire, QUBESD_SOCKET
from qubes_agent.tools import qdb
results = {"full": 0, "ok": 0, "refused": 0}
for i in range(5000):
    reply = qdb("write", path=f"/flood/{i}", value="x" * 100)
    results["full" if "error" in reply else "ok"] += 1
def hammer():
    try:
        qdb("read", path="/name")
    except (OSError, wire.WireError):
        results["refused"] += 1
threads = [threading.Thread(target=hammer) for _ in range(300)]
for t in threads: t.start()
for t in threads: t.join()
for junk in (struct.pack(">I", 2**31) + b"x", b"\x00\x00\x00\x05hello", b"\x00\x00\x00\x02[]"):
    s = wire.connect(QUBESD_SOCKET)
    try:
        s.sendall(junk); s.shutdown(socket.SHUT_WR); s.recv(100)
    except OSError:
        pass  # qubesd hangs up on junk
    s.close()
print(results["ok"], results["full"], qdb("read", path="/name")["value"])
"""



def test_rw_persists_root_resets_and_private_gets_a_revision(installation: Installation
                                                             ) -> None:
    inst = installation
    vm = inst.new_appvm()
    inst.call("admin.vm.volume.Set.revisions_to_keep", vm, "private", "2")
    assert inst.sh(vm, "echo kept > /rw/file; echo gone > /etc/file; hostname",
                   user="root") == f"{vm}\n"
    inst.call("admin.vm.Shutdown", vm, "wait")
    assert inst.state(vm) == "Halted"
    assert inst.call("admin.vm.volume.ListSnapshots", vm, "private").strip() != ""
    out = inst.sh(vm, "cat /rw/file; test -e /etc/file && echo still-there; echo end")
    assert out == "kept\nend\n"
    inst.call("admin.vm.Kill", vm)


def test_a_template_change_outdates_a_running_appvm(installation: Installation) -> None:
    inst = installation
    vm = inst.new_appvm()
    inst.call("admin.vm.Start", vm)
    assert "is_outdated=False" in inst.call("admin.vm.volume.Info", vm, "root")
    inst.sh(inst.template, "echo new > /etc/template-change", user="root")
    inst.call("admin.vm.Shutdown", inst.template, "wait")
    assert "is_outdated=True" in inst.call("admin.vm.volume.Info", vm, "root")
    inst.call("admin.vm.Kill", vm)
    # The next start sees the template's new root.
    assert inst.sh(vm, "cat /etc/template-change") == "new\n"
    inst.call("admin.vm.Kill", vm)


def test_a_dispvm_vanishes_with_its_files(installation: Installation) -> None:
    inst = installation
    base = inst.new_appvm("dvm", template_for_dispvms="True")
    before = set(inst.names())
    result = inst.qvm_run("-p", f"--dispvm={base}",
                          "echo secret > /rw/secret; echo root > /root-file; hostname")
    assert result.returncode == 0, result.stderr
    dispvm = result.stdout.decode().strip()
    assert dispvm.startswith("disp")
    assert set(inst.names()) == before
    assert not (inst.base / "appvms" / dispvm).exists()


def test_a_dispvm_runs_the_in_vm_side_compiled_at_template_build(installation: Installation
                                                                  ) -> None:
    """A DispVM's root is new at every start: what it compiled would be compiled again by
    the next one, so the template holds the compiled modules (hash-checked ones, which
    no Python writes at run time)."""
    from pathlib import Path

    import qubes_core.agent

    inst = installation
    base = inst.new_appvm("dvm", template_for_dispvms="True")
    script = ("python3 -c \"import glob, sys; found = glob.glob('/usr/lib/qubes-sandbox/"
              "qubes_agent/__pycache__/*.' + sys.implementation.cache_tag + '.pyc'); "
              "print(len(found), sorted({open(f, 'rb').read(8)[4] for f in found}))\"")
    result = inst.qvm_run("-p", f"--dispvm={base}", script)
    assert result.returncode == 0, result.stderr
    modules = len(list(Path(qubes_core.agent.__file__).parent.glob("*.py")))
    assert result.stdout.decode().split(maxsplit=1) == [str(modules), "[3]\n"]


def test_vms_see_nothing_of_each_other(installation: Installation) -> None:
    inst = installation
    first, second = inst.new_appvm(), inst.new_appvm()
    inst.sh(second, "echo private-of-second > ~/mine; test -f /rw/home/user/mine")
    script = ("echo found:; grep -rl private-of-second / --exclude-dir=proc --exclude-dir=sys "
              "2>/dev/null; echo devices:; ls /dev | grep -E '^(loop|sd|vd|xvd|dm-)'; "
              "echo channel:; ls /run/qubes-sandbox; echo processes:; "
              "ls /proc | grep -c '^[0-9]'")
    out = inst.sh(first, script, user="root").split()
    assert out[:3] == ["found:", "devices:", "channel:"]  # no file, no disk of anyone
    assert out[3:6] == ["agent.sock", "qubesd.sock", "processes:"]
    assert int(out[6]) < 20  # its own few processes, not the host's or the other VM's
    for vm in (first, second):
        inst.call("admin.vm.Kill", vm)


def test_calls_between_vms_follow_the_policy(installation: Installation) -> None:
    inst = installation
    caller, callee = inst.new_appvm(), inst.new_appvm()
    call = f"echo 'cat; echo from-$(hostname); exit 7' | qrexec-client-vm {callee} qubes.VMShell"
    refused = inst.qvm_run("-p", caller, f"{call}; echo rc=$?")
    assert refused.stdout.decode().strip().endswith("rc=126")
    assert b"denied" in refused.stderr
    assert inst.state(callee) == "Halted"  # a denied call starts nothing
    inst.policy("10-test", f"qubes.VMShell * {caller} {callee} allow\n")
    allowed = inst.qvm_run("-p", caller, f"{call}; echo rc=$?")
    assert allowed.stdout.decode().splitlines() == [f"from-{callee}", "rc=7"]
    redirected = inst.new_appvm()
    inst.policy("10-test", f"qubes.VMShell * {caller} {callee} allow target={redirected}\n")
    out = inst.sh(caller, f"echo 'echo from-$(hostname)' | qrexec-client-vm {callee} "
                          "qubes.VMShell")
    assert out == f"from-{redirected}\n"
    (inst.base / "etc/qubes/policy.d/10-test.policy").unlink()
    for vm in (caller, callee, redirected):
        inst.call("admin.vm.Kill", vm)


def test_qvm_run_exit_codes(installation: Installation) -> None:
    inst = installation
    vm = inst.new_appvm()
    assert inst.qvm_run(vm, "exit 3").returncode == 3
    assert inst.qvm_run("-p", vm, "cat", input=b"piped\n").stdout == b"piped\n"
    assert inst.qvm_run("-p", "-u", "root", vm, "id", "-u").stdout == b"0\n"
    missing = inst.qvm_run("no-such-vm", "true")
    assert missing.returncode == 126 and b"no VM 'no-such-vm'" in missing.stderr
    inst.call("admin.vm.Kill", vm)
    halted = inst.qvm_run("--no-autostart", vm, "true")
    assert halted.returncode == 126 and b"not running" in halted.stderr
    assert inst.state(vm) == "Halted"
    usage = inst.qvm_run(vm)
    assert usage.returncode == 2


ESCAPES = r"printf '\033[31mred\033]0;title\007\tok\r\n\303\251\n'; printf '\033[2J' >&2"


def on_a_terminal(inst: Installation, *args: str) -> bytes:
    """What ``qvm-run ARGS`` writes when its stdout and stderr are a terminal."""
    import pty

    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([str(BIN / "qvm-run"), *args], env=inst.env, stdin=subprocess.DEVNULL,
                              stdout=terminal, stderr=terminal, timeout=120, check=False)
        os.close(terminal)
        terminal = -1
        output = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(controller, 4096):
                output += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert done.returncode == 0
    return output


def test_qvm_run_filters_escape_characters(installation: Installation) -> None:
    inst = installation
    vm = inst.new_appvm()
    raw = b"\033[31mred\033]0;title\007\tok\r\n\303\251\n"
    assert inst.qvm_run("-p", vm, ESCAPES).stdout == raw  # not a terminal: as it came
    filtered = inst.qvm_run("-p", "--filter-escape-chars", vm, ESCAPES)
    assert filtered.stdout == b"_[31mred_]0;title\007\tok\r\n__\n"
    assert filtered.stderr == b"_[2J"
    # on a terminal (which turns \n into \r\n): filtered by default, stdout not when refused
    shown = on_a_terminal(inst, "-p", vm, ESCAPES)  # stderr's part may land anywhere in it
    assert b"_[2J" in shown
    assert shown.replace(b"_[2J", b"", 1) == b"_[31mred_]0;title\007\tok\r\r\n__\r\n"
    unfiltered = on_a_terminal(inst, "-p", "--no-filter-escape-chars", vm, ESCAPES)
    assert b"\033[31mred" in unfiltered and b"_[2J" in unfiltered  # stderr: a terminal
    inst.call("admin.vm.Kill", vm)


def test_a_vm_killed_from_outside_is_seen_halted_and_committed(installation: Installation
                                                                ) -> None:
    inst = installation
    vm = inst.new_appvm()
    inst.sh(vm, "echo before-kill > ~/file; sync")
    os.kill(inst.record(vm)["init-pid"], signal.SIGKILL)
    inst.wait_state(vm, "Halted")
    dirty = inst.base / "appvms" / vm / "private-dirty.img"
    # The stop is being handled: the commit follows the halt.
    wait_until(lambda: not dirty.exists(), what="private committed")
    assert inst.sh(vm, "cat ~/file") == "before-kill\n"
    inst.call("admin.vm.Kill", vm)


def test_vms_survive_a_qubesd_restart(installation: Installation) -> None:
    inst = installation
    vm = inst.new_appvm()
    inst.call("admin.vm.Start", vm)
    started = inst.call("admin.vm.property.Get", vm, "start_time")
    inst.sh(vm, "echo alive > /tmp/mark")
    inst.stop_qubesd(signal.SIGKILL)  # a crash, not a clean stop
    inst.start_qubesd()
    assert inst.state(vm) == "Running"
    assert inst.call("admin.vm.property.Get", vm, "start_time") == started
    assert inst.sh(vm, "cat /tmp/mark; qubesdb-read /name") == f"alive\n{vm}\n"
    inst.call("admin.vm.Shutdown", vm, "wait")
    assert inst.state(vm) == "Halted"


def test_features_request_from_a_template(installation: Installation) -> None:
    inst = installation
    tpl = inst.template
    inst.sh(tpl, "qvm-features-request os-distribution=debian os-version=12 --commit",
            user="root")
    assert inst.call("admin.vm.feature.Get", tpl, "os-distribution") == "debian"
    bad = inst.qvm_run("-p", "-u", "root", tpl,
                       "qvm-features-request 'os-version=$(reboot)' --commit")
    assert inst.call("admin.vm.feature.Get", tpl, "os-version") == "12"
    assert bad.returncode in (0, 1)
    inst.call("admin.vm.Shutdown", tpl, "wait")


def test_the_clock_comes_from_the_clockvm(installation: Installation) -> None:
    inst = installation
    clock, vm = inst.new_appvm("clock"), inst.new_appvm()
    inst.call("admin.property.Set", "dom0", "clockvm", clock)
    try:
        out = inst.sh(vm, "qrexec-client-vm dom0 qubes.GetDate")
        assert out.startswith("20") and "T" in out
        assert inst.state(clock) == "Running"  # the redirect reached the clockvm
        # and the VM's init asks by itself soon after the start, and only logs the offset
        guest_log = inst.base / "log" / f"guest-{vm}.log"
        wait_until(lambda: "init: clock: would move the clock by" in guest_log.read_text(),
                   what="the init's clock check")
    finally:
        inst.call("admin.property.Set", "dom0", "clockvm", "")
    for name in (clock, vm):
        inst.call("admin.vm.Kill", name)


@pytest.mark.parametrize("name", ["../etc/passwd", "a" * 200, "qubes.VMShell+../x",
                                  "$(reboot)", "qubes.VMShell+-rf", ""])
def test_hostile_service_names_are_refused(installation: Installation, name: str) -> None:
    inst = installation
    vm = inst.vm_for_faults()
    inst.policy("10-any", "* * @anyvm @anyvm allow\n")
    try:
        result = inst.qvm_run("-p", vm, f"qrexec-client-vm dom0 '{name}' </dev/null; "
                                        "echo rc=$?")
    finally:
        (inst.base / "etc/qubes/policy.d/10-any.policy").unlink()
    assert result.stdout.decode().strip().endswith("rc=126"), result.stderr
    assert b"invalid" in result.stderr or b"usage" in result.stderr


def test_a_vm_flooding_qubesdb_and_its_socket_changes_nothing_else(installation: Installation
                                                                   ) -> None:
    inst = installation
    vm = inst.new_appvm("flood")
    result = inst.qvm_run("-p", vm, "python3 -", input=FLOOD.encode(), timeout=300)
    assert result.returncode == 0, result.stderr
    written, refused_full, name = result.stdout.decode().split()
    assert int(refused_full) > 0 and int(written) + int(refused_full) == 5000
    assert name == vm  # still served after the junk and the crowd
    assert inst.sh(inst.vm_for_faults(), "qubesdb-read /name") == f"{inst.vm_for_faults()}\n"
    inst.call("admin.vm.Kill", vm)


def test_qrexec_floods_are_bounded(installation: Installation) -> None:
    inst = installation
    vm = inst.vm_for_faults()
    script = ("for i in $(seq 60); do (sleep 2 | qrexec-client-vm dom0 qubes.GetDate "
              ">/dev/null 2>&1; echo $?) & done; wait")
    codes = inst.sh(vm, script).split()
    assert len(codes) == 60 and set(codes) <= {"0", "126"}
    assert inst.sh(vm, "echo alive") == "alive\n"


def test_a_process_that_ignores_shutdown_is_killed_after_the_grace_time(
        installation: Installation) -> None:
    inst = installation
    vm = inst.new_appvm()
    inst.sh(vm, "(trap '' TERM; exec sleep 600) >/dev/null 2>&1 &", user="root")
    inst.call("admin.vm.Shutdown", vm, "wait")
    assert inst.state(vm) == "Halted"
    assert not (inst.base / "appvms" / vm / "private-dirty.img").exists()


def test_qubesd_killed_while_a_vm_starts_or_stops(installation: Installation) -> None:
    inst = installation
    vm = inst.new_appvm()
    uuid = inst.call("admin.vm.property.Get", vm, "uuid").split()[-1]
    record = inst.base / "run/sandbox" / uuid / "vm.json"
    def start() -> None:
        with contextlib.suppress(Exception):  # qubesd dies under the call
            inst.call("admin.vm.Start", vm)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    wait_until(record.exists, what="the keeper's record")
    inst.stop_qubesd(signal.SIGKILL)
    starter.join(30)
    # The server that forked the keeper ends with qubesd; the keeper does not.
    wait_until(lambda: not keeper_processes(inst.base, servers=True),
               what="the keeper server gone with qubesd")
    inst.start_qubesd()
    # Found again, running: the start went on without qubesd.
    inst.wait_state(vm, "Running")
    assert inst.sh(vm, "hostname") == f"{vm}\n"
    inst.call("admin.vm.Shutdown", vm)
    inst.stop_qubesd(signal.SIGKILL)
    inst.start_qubesd()
    inst.wait_state(vm, "Halted")
    dirty = inst.base / "appvms" / vm / "private-dirty.img"
    wait_until(lambda: not dirty.exists(), what="private committed by the new qubesd")


def test_qubesd_stopped_while_a_keeper_mounts_leaves_no_vm_on_undone_volumes(
        installation: Installation) -> None:
    """A clean stop of qubesd calls a start off: the VM its keeper brings up anyway is
    stopped before its volumes' start is undone, not left running on removed images."""
    inst = installation
    vm = inst.new_appvm()
    before = set(keeper_processes(inst.base, servers=False))
    log = inst.base.parent / "qubesd.log"
    logged = log.stat().st_size

    def start() -> None:
        with contextlib.suppress(Exception):  # qubesd stops under the call
            inst.call("admin.vm.Start", vm)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    keepers: list[int] = []
    deadline = time.monotonic() + 60
    while not keepers and time.monotonic() < deadline:  # no pause: the window is short
        keepers = [pid for pid in keeper_processes(inst.base, servers=False)
                   if pid not in before]
    assert keepers, "no keeper started"
    os.kill(keepers[0], signal.SIGSTOP)  # held while it mounts, before it reports
    stopper = threading.Thread(target=inst.stop_qubesd, daemon=True)
    try:
        stopper.start()
        wait_until(lambda: b"stopping" in log.read_bytes()[logged:], what="qubesd stopping")
    finally:
        os.kill(keepers[0], signal.SIGCONT)
    stopper.join(90)
    starter.join(30)
    inst.start_qubesd()
    if inst.state(vm) == "Halted":
        assert set(keeper_processes(inst.base, servers=False)) <= before
    else:  # the start won the race: then its volumes are started and it works
        assert (inst.base / "appvms" / vm / "private-dirty.img").exists()
        assert inst.sh(vm, "hostname") == f"{vm}\n"
        inst.call("admin.vm.Kill", vm)


def test_a_large_script_through_qubes_vmrootshell(installation: Installation) -> None:
    """What salt-ssh does over qrexec: a big script piped into a root shell."""
    inst = installation
    manager, target = inst.new_appvm(), inst.new_appvm()
    inst.policy("10-rootshell", f"qubes.VMRootShell * {manager} {target} allow user=root\n")
    try:
        script = "x=0\n" + "x=$((x+1))\n" * 20000 + "echo $x $(id -u)\n"
        copied = inst.qvm_run("-p", manager, "cat > /tmp/script", input=script.encode())
        assert copied.returncode == 0
        out = inst.sh(manager, f"qrexec-client-vm {target} qubes.VMRootShell < /tmp/script")
        assert out == "20000 0\n"
    finally:
        (inst.base / "etc/qubes/policy.d/10-rootshell.policy").unlink()
    for vm in (manager, target):
        inst.call("admin.vm.Kill", vm)


def test_a_template_with_salt_runs_salt_call(installation: Installation) -> None:
    inst = installation
    name = f"salt-{inst.suite}"
    build = subprocess.run([str(BIN / "qubes-template-build"), "--base-dir", str(inst.base),
                            "--suite", inst.suite, "--with-salt", name], env=inst.env,
                           capture_output=True, timeout=1800, check=False)
    assert build.returncode == 0, build.stderr.decode()
    out = inst.sh(name, "salt-call --local --out=json test.ping 2>/dev/null; "
                        "command -v salt-ssh", user="root")
    assert '"local": true' in out and "salt-ssh" in out
    inst.call("admin.vm.Kill", name)


def test_suspend_freezes_the_sandbox_and_resume_continues_it(installation: Installation
                                                             ) -> None:
    """A sandbox has no kernel to put to sleep: suspended, its processes are stopped
    (state Paused); resumed, they run on. Stats reports the running VM's figures."""
    inst = installation
    vm = inst.new_appvm()
    inst.call("admin.vm.Start", vm)
    init = inst.record(vm)["init-pid"]
    inst.call("admin.vm.Suspend", vm)
    assert inst.state(vm) == "Paused"
    with open(f"/proc/{init}/stat", encoding="ascii") as stat:
        assert stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    inst.call("admin.vm.Resume", vm)
    assert inst.state(vm) == "Running"
    assert inst.sh(vm, "echo awake") == "awake\n"
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(30)
        client.connect(str(resolve(inst.base).admin_socket))
        client.sendall(protocol.encode_request("admin.vm.Stats", "dom0", vm))
        client.shutdown(socket.SHUT_WR)
        buffer = bytearray()
        events: list[tuple[str, str, dict[str, str]]] = []
        while len(events) < 2:  # connection-established, then the first vm-stats
            chunk = client.recv(4096)
            assert chunk, bytes(buffer)
            buffer.extend(chunk)
            events += protocol.split_events(buffer)
    assert events[0][1] == "connection-established"
    subject, event, stats = events[1]
    assert (subject, event) == (vm, "vm-stats")
    assert int(stats["memory_kb"]) > 0 and int(stats["online_vcpus"]) > 0
    inst.call("admin.vm.Kill", vm)
