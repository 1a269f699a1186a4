"""100 000 malformed or hostile requests: qubesd stays up, answers each with an
exception reply or a closed socket, and nothing changes on disk.

A closed socket is only acceptable where the protocol says so: a request that
cannot be framed, or one from a source other than dom0 (refused without a
word). A framed request from dom0 that names an existing method must get a
reply; a handler that crashes closes the socket instead, and fails the test,
as does any unexpected-error line in qubesd's log.
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from qubes_core import protocol
from qubes_core.api.registry import get_method
from qubes_core.client import Qubes as ClientQubes
from tests.functional.api.conftest import file_digest, serve_installation

TOTAL = 100_000
CONCURRENCY = 16
SEED = 20240611

VMS = ["vm1", "vm2", "sys-net", "debian-12", "dom0"]
BAD_NAMES = ["", "ghost", "-x", "a" * 40, "vm1 ", "dom0\x01", "ünï", "..", "vm1/../x",
             "name", "keyword", "$anyvm", "@adminvm"]
WRONG_VALUES = {
    "memory": [b"lots", b"-1", b"0", b"1.5", b"", b"0x10", b"\xff"],
    "vcpus": [b"-2", b"two", b"0"],
    "maxmem": [b"-1", b"many"],
    "provides_network": [b"maybe", b"2", b"yes please"],
    "netvm": [b"ghost", b"vm1", b"debian-12x", b"dom0"],
    "template": [b"sys-net", b"ghost", b"vm2"],
    "label": [b"ultraviolet", b"99", b"label-x", b""],
    "virt_mode": [b"xen", b"HVM", b""],
    "kernelopts": [b"a\x00b", b"x\ny", b"\xc3\x28", b"\x7f"],
    "mac": [b"zz:zz", b"00:16:3e"],
    "ip": [b"300.1.1.1", b"::1x"],
    "name": [b"renamed"],
    "qid": [b"5"],
    "uuid": [b"00000000-0000-0000-0000-000000000000"],
    "start_time": [b"1"],
    "nosuchprop": [b"1"],
}
GLOBAL_WRONG = {
    "default_netvm": [b"vm1", b"ghost"],
    "default_template": [b"vm1", b"sys-net"],
    "default_qrexec_timeout": [b"soon"],
    "default_pool": [b"nopool"],
    "default_dispvm": [b"vm2"],
    "clockvm": [b"ghost"],
}


def req(method: str, src: str, dest: str, arg: str, payload: bytes) -> bytes:
    meth = method + ("+" + arg if arg else "")
    target = "keyword adminvm" if dest == "dom0" else "name " + dest
    return f"{meth} {src} {target}".encode("utf-8", "surrogateescape") + b"\x00" + payload


def hostile_requests(rng: random.Random):
    """Endless stream of requests that must all fail."""
    kinds = [random_bytes, truncated, unknown_method, bad_names, invalid_utf8, nul_in_arg,
             wrong_type, shape_violation, bad_collection_writes, from_vm]
    while True:
        yield rng.choice(kinds)(rng)


def random_bytes(rng):
    data = os.urandom(rng.randint(0, 200))
    return data if rng.random() < 0.5 else data.replace(b"\x00", b"") + b"\x00"


def truncated(rng):
    base = wrong_type(rng)
    header_end = base.index(b"\x00")
    return base[:rng.randint(0, header_end)]


def unknown_method(rng):
    name = rng.choice(["admin.vm.Explode", "admin.vm.property.Delete", "qubes.Nope",
                       "internal.Nope", "admin", "admin.vm.Create.NoClass",
                       "admin.vm.device.usb.Assign", "".join(rng.choices("abcXYZ.", k=12))])
    return req(name, "dom0", rng.choice(VMS), rng.choice(["", "x"]), b"")


def bad_names(rng):
    method = rng.choice(["admin.vm.property.Set", "admin.vm.feature.Set", "admin.vm.Remove",
                         "admin.vm.tag.Set", "admin.vm.List"])
    dest = rng.choice(BAD_NAMES)
    src = rng.choice(["dom0", rng.choice(BAD_NAMES)])
    return req(method, src, dest, "memory" if "property" in method else "", b"500")


def invalid_utf8(rng):
    payload = rng.choice([b"\xff", b"\xc3\x28", b"ab\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88"])
    method, arg = rng.choice([("admin.vm.property.Set", "kernelopts"),
                              ("admin.vm.feature.Set", "f"),
                              ("admin.property.Set", "default_kernel")])
    dest = "dom0" if method.startswith("admin.property") else rng.choice(VMS[:-1])
    head = req(method, "dom0", dest, arg, b"")
    if rng.random() < 0.3:  # invalid UTF-8 in the header itself
        head = head.replace(arg.encode(), arg.encode() + b"\xff", 1)
    return head + payload


def nul_in_arg(rng):
    return (b"admin.vm.feature.Set+a\x00b dom0 name vm1\x00" if rng.random() < 0.5 else
            b"admin.vm.property.Get+net\x01vm dom0 name vm1\x00")


def wrong_type(rng):
    if rng.random() < 0.2:
        prop = rng.choice(list(GLOBAL_WRONG))
        return req("admin.property.Set", "dom0", "dom0", prop, rng.choice(GLOBAL_WRONG[prop]))
    prop = rng.choice(list(WRONG_VALUES))
    dest = rng.choice(["vm1", "vm2", "sys-firewall"])
    return req("admin.vm.property.Set", "dom0", dest, prop, rng.choice(WRONG_VALUES[prop]))


def shape_violation(rng):
    return rng.choice([
        req("admin.vm.List", "dom0", "dom0", "arg", b""),
        req("admin.vm.property.Get", "dom0", "vm1", "", b""),
        req("admin.vm.property.Get", "dom0", "vm1", "memory", b"payload"),
        req("admin.vm.tag.Set", "dom0", "vm1", "t", b"payload"),
        req("admin.property.Set", "dom0", "vm1", "clockvm", b"vm1"),
        req("admin.label.Create", "dom0", "vm1", "x", b"0x123456"),
        req("admin.vm.Create.AppVM", "dom0", "vm1", "", b"name=a label=red"),
    ])


def bad_collection_writes(rng):
    vm = rng.choice(["vm1", "vm2"])
    return rng.choice([
        req("admin.vm.feature.Set", "dom0", vm, rng.choice(["bad/name", "", "x" * 300,
                                                             "a b"]), b"1"),
        req("admin.vm.feature.Remove", "dom0", vm, "never-set", b""),
        req("admin.vm.tag.Set", "dom0", vm, rng.choice(["bad.tag", "a/b", "x" * 300]), b""),
        req("admin.vm.tag.Remove", "dom0", vm, "never-set", b""),
        req("admin.label.Create", "dom0", "dom0", "newlabel", rng.choice([b"red", b"0xGG0000",
                                                                          b"", b"\xff"])),
        req("admin.label.Create", "dom0", "dom0", "9bad", b"0x123456"),
        req("admin.label.Remove", "dom0", "dom0", rng.choice(["red", "nolabel"]), b""),
        req("admin.vm.Create.AppVM", "dom0", "dom0", "", rng.choice([
            b"name=vm1 label=red", b"name=x", b"label=red", b"name=x label=red pool=p",
            b"name=1x label=red", b"name=x label=nolabel", b"name=x=y label=red",
            b"name=x label=red name=y", b"\xff"])),
        req("admin.vm.Create.AppVM", "dom0", "dom0", "ghost", b"name=x label=red"),
        req("admin.vm.Create.AdminVM", "dom0", "dom0", "", b"name=x label=red"),
        req("admin.vm.Remove", "dom0", rng.choice(["dom0", "sys-net", "debian-12"]), "", b""),
        req("admin.vm.device.pci.Assign", "dom0", vm, rng.choice(["dom0+zz", "x", "ghost+00_00.0",
                                                                  "dom0+"]), b""),
        req("admin.vm.device.pci.Unassign", "dom0", vm, "dom0+00_01.0", b""),
        req("admin.vm.CreateDisposable", "dom0", vm, "", b""),
        req("admin.vm.Shutdown", "dom0", vm, "softly", b""),
        req("admin.vm.Start", "dom0", vm, "", b""),
        req("qubes.NotifyUpdates", vm, "dom0", "", b"lots"),
    ])


def from_vm(rng):
    """Calls from a VM that no policy grants."""
    method, arg, payload = rng.choice([("admin.vm.property.Set", "memory", b"500"),
                                       ("admin.vm.feature.Set", "x", b"1"),
                                       ("admin.vm.List", "", b""),
                                       ("admin.vm.Remove", "", b"")])
    return req(method, rng.choice(["vm1", "sys-net"]), rng.choice(VMS), arg, payload)


def snapshot(base) -> tuple:
    listing = sorted(str(p.relative_to(base)) for p in base.rglob("*")
                     if "log" not in p.parts)
    xml = base / "qubes.xml"
    return file_digest(xml), xml.stat().st_mtime_ns, listing


async def send(path: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        writer.write_eof()
        await writer.drain()
    except (ConnectionError, BrokenPipeError):
        pass
    try:
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def must_be_answered(data: bytes) -> bool:
    """Whether the protocol requires a reply: framed, from dom0, an existing method."""
    try:
        request = protocol.parse_request(data)
    except protocol.FramingError:
        return False
    return request.src == "dom0" and get_method(request.method) is not None


async def run_fuzz(path: str, total: int) -> dict[str, int]:
    rng = random.Random(SEED)
    source = hostile_requests(rng)
    counts = {"closed": 0, "exception": 0}
    bad: list[tuple[bytes, bytes]] = []
    unanswered: list[bytes] = []
    lock = asyncio.Lock()
    sent = 0

    async def worker():
        nonlocal sent
        while True:
            async with lock:
                if sent >= total:
                    return
                sent += 1
                data = next(source)
            reply = await send(path, data)
            if not reply and must_be_answered(data):
                unanswered.append(data)
            elif not reply:
                counts["closed"] += 1
            elif reply.startswith(protocol.EXCEPTION) and reply.endswith(b"\x00"):
                counts["exception"] += 1
            else:
                bad.append((data, reply))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert not bad[:5], bad[:5]
    assert not unanswered, f"{len(unanswered)} requests got no reply, e.g. {unanswered[:5]}"
    return counts


def unexpected_errors(log_text: str) -> list[str]:
    """Lines of qubesd's log that report a crash rather than a refused request."""
    return [line for line in log_text.splitlines()
            if line.startswith("Traceback") or "unexpected error" in line
            or line.startswith("qubesd: ERROR qubes.api: error in ")]


async def oversize(path: str) -> None:
    for size in (65536, 65537, 100_000, 1_000_000):
        data = b"admin.vm.feature.Set+big dom0 name vm1\x00" + b"A" * size
        assert await send(path, data) == b""


@pytest.fixture
def flooded_qubesd(tmp_path):
    """qubesd without the loop watch: asyncio's debug mode records a traceback for every
    callback, which makes ten thousand calls ten times slower; this test is about
    hostile input, the loop is watched by the others."""
    yield from serve_installation(tmp_path, watch_loop=False)


def test_fuzz_hostile_requests(flooded_qubesd):
    qubesd = flooded_qubesd
    base = qubesd.base_dir
    before = snapshot(base)
    log_path = qubesd.paths.log_dir / "qubesd-embedded.log"
    log_start = log_path.stat().st_size
    path = str(qubesd.paths.admin_socket)
    counts = asyncio.run(run_fuzz(path, TOTAL))
    asyncio.run(oversize(path))
    # The VM-facing socket gets its share of the hostile calls too.
    misc = asyncio.run(run_fuzz(str(qubesd.paths.misc_socket), 2000))
    assert qubesd.alive()
    assert counts["closed"] + counts["exception"] == TOTAL
    assert counts["closed"] > 1000 and counts["exception"] > 1000
    assert sum(misc.values()) == 2000
    assert snapshot(base) == before
    with open(log_path, errors="replace") as log_file:
        log_file.seek(log_start)
        crashes = unexpected_errors(log_file.read())
    assert not crashes, crashes[:10]
    client = ClientQubes(base)
    assert client.domains["vm1"].memory == 400
    assert "vm1" in client.domains and len(client.domains) == 7
