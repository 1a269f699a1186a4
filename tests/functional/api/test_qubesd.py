"""A real qubesd process: sockets, bytes on the wire, command-line clients, start-up."""

from __future__ import annotations

import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from qubes_core import protocol
from qubes_core.app import Qubes
from qubes_core.client import Qubes as ClientQubes
from qubes_core.client.embedded import EmbeddedQubesd, listening
from tests.functional.api.conftest import build_installation, in_base_env


def exchange(path, data: bytes, shutdown: bool = True) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    try:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return b""
    finally:
        sock.close()
    return b"".join(chunks)


def test_replies_byte_for_byte(qubesd):
    sock = qubesd.paths.admin_socket
    assert exchange(sock, b"admin.vm.property.Get+label dom0 name vm1\x00") == (
        b"0\x00default=False type=label blue")
    assert exchange(sock, b"admin.vm.property.Get+label dom0 name ghost\x00") == (
        b"2\x00QubesVMNotFoundError\x00\x00No such domain: 'ghost'\x00")
    assert exchange(sock, b"admin.No.Such dom0 keyword adminvm\x00") == (
        b"2\x00ProtocolError\x00\x00no such method: 'admin.No.Such'\x00")
    assert exchange(sock, b"admin.label.Get+red dom0 keyword adminvm\x00") == (
        b"0\x000xcc0000")


@pytest.mark.parametrize("data", [
    b"admin.vm.List dom0 keyword adminvm",   # no NUL before EOF
    b"garbage\x00",
    b"admin.vm.List dom0 keyword nothing\x00",
    b"\xff\xfe\x00",
])
def test_unframeable_request_closes_without_reply(qubesd, data):
    assert exchange(qubesd.paths.admin_socket, data) == b""
    assert qubesd.alive()


def test_oversize_request_closes(qubesd):
    data = b"admin.vm.feature.Set+x dom0 name vm1\x00" + b"a" * 70000
    assert exchange(qubesd.paths.admin_socket, data) == b""
    client = ClientQubes(qubesd.base_dir)
    assert "x" not in client.domains["vm1"].features


def test_64_kib_is_the_limit(qubesd):
    """A request of exactly 64 KiB is answered; one byte more closes the connection."""
    header = b"admin.vm.feature.Set+big dom0 name vm1\x00"
    fits = header + b"v" * (65536 - len(header))
    assert exchange(qubesd.paths.admin_socket, fits) == b"0\x00"
    assert exchange(qubesd.paths.admin_socket, fits + b"v") == b""
    features = ClientQubes(qubesd.base_dir).domains["vm1"].features
    assert features["big"] == "v" * (65536 - len(header))


def test_sockets_are_not_world_accessible(qubesd):
    for path in (qubesd.paths.admin_socket, qubesd.paths.internal_socket,
                 qubesd.paths.misc_socket):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert mode & 0o007 == 0


def test_second_qubesd_refuses_the_same_installation(qubesd):
    result = subprocess.run([sys.executable, "-m", "qubes_core.qubesd", "--base-dir",
                             str(qubesd.base_dir), "--runtime", "offline"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "locked" in result.stderr
    assert qubesd.alive() and listening(qubesd.paths.admin_socket)


def test_client_over_the_socket(qubesd):
    client = ClientQubes(qubesd.base_dir)
    vm = client.domains["vm1"]
    assert vm.klass == "AppVM" and vm.get_power_state() == "Halted"
    assert vm.netvm == client.domains["sys-firewall"]
    assert vm.template.name == "debian-12"
    vm.memory = 777
    assert vm.memory == 777 and not vm.property_is_default("memory")
    del vm.memory
    assert vm.memory == 400 and vm.property_is_default("memory")
    vm.features["gui"] = True
    assert vm.features["gui"] == "1" and "gui" in vm.features
    vm.tags.add("work")
    assert "work" in vm.tags
    assert sorted(vm.tags) == ["audiovm-dom0", "guivm-dom0", "work"]  # Qubes' automatic tags
    assert client.default_netvm == "sys-firewall"
    new = client.add_new_vm("AppVM", "fresh", "red")
    assert "fresh" in client.domains and new.label == "red"
    client.remove_vm("fresh")
    assert "fresh" not in client.domains


def test_cache_scope_uses_one_getall_per_vm(qubesd):
    client = ClientQubes(qubesd.base_dir)
    with client.cache():
        start = client.transport.calls
        rows = [(vm.name, vm.klass, vm.label, getattr(vm, "netvm", None),
                 getattr(vm, "memory", None), vm.get_power_state()) for vm in client.domains]
        used = client.transport.calls - start
    assert len(rows) == 7
    assert used == 1 + len(rows)  # one List, one GetAll per VM
    vm1 = client.domains["vm1"]
    outside = client.transport.calls
    vm1.memory  # noqa: B018 - a read outside the scope asks again
    assert client.transport.calls == outside + 1


def test_writes_inside_cache_scope_are_seen(qubesd):
    client = ClientQubes(qubesd.base_dir)
    with client.cache():
        vm = client.domains["vm1"]
        assert vm.memory == 400
        vm.memory = 600
        assert vm.memory == 600


def test_client_event_stream(qubesd):
    """The client's events(): connection-established first, then what other clients do."""
    stream = ClientQubes(qubesd.base_dir).events()
    seen: list[tuple[str, str, dict[str, str]]] = []
    established = threading.Event()

    def listen() -> None:
        for event in stream:
            seen.append(event)
            established.set()
            if event[1] == "domain-feature-set:watched":
                break

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert established.wait(10)
    ClientQubes(qubesd.base_dir).domains["vm1"].features["watched"] = "yes"
    listener.join(10)
    assert not listener.is_alive(), seen
    stream.close()
    assert seen[0] == ("", "connection-established", {})
    assert ("vm1", "domain-feature-set:watched",
            {"feature": "watched", "value": "yes", "oldvalue": ""}) in seen


def test_qubesd_query_and_fast_client(qubesd):
    env = in_base_env(qubesd.base_dir)
    for tool in ("qubesd-query", "qubesd-query-fast"):
        exe = os.path.join(os.path.dirname(sys.executable), tool)
        out = subprocess.run([exe, "-e", "dom0", "admin.vm.property.Get", "vm1", "label"],
                             capture_output=True, env=env, timeout=60)
        assert out.stdout == b"0\x00default=False type=label blue", tool
        out = subprocess.run([exe, "--fail", "-e", "dom0", "admin.vm.property.Get", "vm1",
                              "label"], capture_output=True, env=env, timeout=60)
        assert (out.returncode, out.stdout) == (0, b"default=False type=label blue"), tool
        out = subprocess.run([exe, "--fail", "-e", "dom0", "admin.vm.property.Get", "ghost",
                              "label"], capture_output=True, env=env, timeout=60)
        assert out.returncode == 1 and b"QubesVMNotFoundError" in out.stderr, tool
        out = subprocess.run([exe, "--fail", "dom0", "admin.vm.feature.Set", "vm1", "k"],
                             input=b"from-stdin", capture_output=True, env=env, timeout=60)
        assert out.returncode == 0, tool
    assert ClientQubes(qubesd.base_dir).domains["vm1"].features["k"] == "from-stdin"


def read_until(stream, marker: bytes, timeout: float = 20.0) -> bytes:
    """Read a pipe until ``marker`` appears (bounded by ``timeout``)."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"{marker!r} not seen in {data!r}"
        chunk = os.read(stream.fileno(), 65536)
        assert chunk, f"stream ended before {marker!r}: {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("tool", ["qubesd-query", "qubesd-query-fast"])
def test_command_line_clients_stream_events(qubesd, tool):
    exe = os.path.join(os.path.dirname(sys.executable), tool)
    process = subprocess.Popen([exe, "--fail", "-e", "dom0", "admin.Events", "dom0"],
                               stdout=subprocess.PIPE, env=in_base_env(qubesd.base_dir))
    try:
        first = read_until(process.stdout, b"connection-established\x00\x00")
        assert first == protocol.encode_event("", "connection-established", {})
        ClientQubes(qubesd.base_dir).domains["vm1"].tags.add("streamed")
        read_until(process.stdout, protocol.encode_event("vm1", "domain-tag-add:streamed",
                                                         {"tag": "streamed"}))
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def test_embedded_qubesd_for_one_command(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=1)
    env = in_base_env(base)
    out = subprocess.run(["qubesd-query", "--fail", "-e", "dom0", "admin.vm.List", "dom0"],
                         capture_output=True, env=env, timeout=120,
                         executable=os.path.join(os.path.dirname(sys.executable),
                                                 "qubesd-query"))
    assert out.returncode == 0, out.stderr
    assert b"vm1 class=AppVM" in out.stdout
    socket_path = base / "run" / "qubesd.sock"
    assert not listening(socket_path)  # stopped when the command ended
    with ClientQubes(base, start=True, runtime="offline") as client:
        client.domains["vm1"].features["set-embedded"] = "1"
        assert listening(socket_path)
    assert not listening(socket_path)
    reloaded = Qubes(base / "qubes.xml", lock=False)
    assert reloaded.domains["vm1"].features["set-embedded"] == "1"
    reloaded.close()


def test_embedded_start_reports_why_it_failed(tmp_path):
    from qubes_core import exc

    with pytest.raises(exc.QubesException, match="does not exist"):
        EmbeddedQubesd.start(tmp_path / "empty", runtime="offline")


def test_start_removes_stale_disposables(tmp_path):
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=1)
    app = Qubes(base / "qubes.xml")
    vm1 = app.domains["vm1"]
    vm1.template_for_dispvms = True
    stale = app.add_new_vm("DispVM", template=vm1, auto_cleanup=True)
    kept = app.add_new_vm("DispVM", template=vm1, auto_cleanup=False)
    app.save()
    app.close()
    daemon = EmbeddedQubesd.start(base, runtime="offline")
    try:
        names = ClientQubes(base).domains.keys()
        assert stale.name not in names and kept.name in names
    finally:
        daemon.stop()
    reloaded = Qubes(base / "qubes.xml", lock=False)
    assert stale.name not in reloaded.domains and kept.name in reloaded.domains
    reloaded.close()


def test_stop_fires_and_cleans_sockets(qubesd):
    paths = qubesd.paths
    qubesd.stop()
    assert not paths.admin_socket.exists() and not paths.misc_socket.exists()


def test_start_keeps_a_stale_disposable_that_is_still_used(tmp_path):
    """A stale DispVM that another VM uses as netvm stays (the log says why); qubesd
    starts anyway, and a stale DispVM that only another stale one used goes too."""
    base = tmp_path / "inst"
    base.mkdir()
    build_installation(base, appvms=2)
    app = Qubes(base / "qubes.xml")
    vm1 = app.domains["vm1"]
    vm1.template_for_dispvms = True
    vm1.provides_network = True
    used = app.add_new_vm("DispVM", template=vm1, auto_cleanup=True)
    app.domains["vm2"].netvm = used
    chained = app.add_new_vm("DispVM", template=vm1, auto_cleanup=True)
    chained_user = app.add_new_vm("DispVM", template=vm1, auto_cleanup=True, netvm=chained)
    app.save()
    app.close()
    daemon = EmbeddedQubesd.start(base, runtime="offline")
    try:
        names = ClientQubes(base).domains.keys()
        assert used.name in names
        assert chained.name not in names and chained_user.name not in names
    finally:
        daemon.stop()
    log = (base / "log" / "qubesd-embedded.log").read_text()
    assert f"keeping {used.name}, a disposable VM left behind by an unclean stop: " \
           f"cannot remove {used.name}: it is used by vm2.netvm" in log
    reloaded = Qubes(base / "qubes.xml", lock=False)
    assert used.name in reloaded.domains and chained.name not in reloaded.domains
    reloaded.close()
