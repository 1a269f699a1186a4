"""admin.vm.Start and admin.vm.Remove of the same VM sent at once, against a real
qubesd running VMs on libvirt's test driver.

Whatever order the server takes them in, the outcome must be one of two: the VM
was removed (and Start refused), or it started (and Remove refused). Never both:
a domain left running for a VM that is gone from qubes.xml, images deleted under
a running domain, or an empty ``appvms/NAME`` directory left behind.
"""

from __future__ import annotations

import asyncio

import pytest

from qubes_core import protocol
from qubes_core.client.embedded import EmbeddedQubesd
from qubes_core.paths import resolve
from tests.requirements import require

ROUNDS = 40
NAME = "race"


def _require_libvirt() -> None:
    try:
        import libvirt  # noqa: F401
    except ImportError as err:
        require(False, f"needs libvirt-python: {err}")


@pytest.fixture
def live_qubesd(tmp_path):
    """A qubesd process on libvirt's test driver with a template (made through the API)."""
    _require_libvirt()
    base = tmp_path / "inst"
    daemon = EmbeddedQubesd.start(base, runtime="test", create=True)
    assert daemon is not None
    try:
        yield base
    finally:
        daemon.stop()


async def call(base, method: str, dest: str = "dom0", arg: str = "",
               payload: bytes = b"") -> bytes:
    """One request over the admin socket; the raw reply (b"" when closed)."""
    reader, writer = await asyncio.open_unix_connection(str(resolve(base).admin_socket))
    try:
        writer.write(protocol.encode_request(method, "dom0", dest, arg, payload))
        writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()


async def ok(base, method: str, dest: str = "dom0", arg: str = "",
             payload: bytes = b"") -> str:
    reply = await call(base, method, dest, arg, payload)
    assert reply.startswith(protocol.OK), (method, dest, arg, reply)
    return reply[len(protocol.OK):].decode()


def exception_type(reply: bytes) -> str:
    assert reply.startswith(protocol.EXCEPTION), reply
    return reply[len(protocol.EXCEPTION):].split(b"\x00", 1)[0].decode()


async def race_rounds(base) -> list[str]:
    await ok(base, "admin.vm.Create.TemplateVM", payload=b"name=tpl label=black")
    await ok(base, "admin.property.Set", arg="default_template", payload=b"tpl")
    vm_dir = base / "appvms" / NAME
    outcomes = []
    for number in range(ROUNDS):
        await ok(base, "admin.vm.Create.AppVM", payload=f"name={NAME} label=red".encode())
        # Vary which request the server reads first.
        first, second = ("admin.vm.Start", "admin.vm.Remove")[::1 - 2 * (number % 2)]
        replies = dict(zip((first, second), await asyncio.gather(
            call(base, first, NAME), call(base, second, NAME)), strict=True))
        started = replies["admin.vm.Start"].startswith(protocol.OK)
        removed = replies["admin.vm.Remove"].startswith(protocol.OK)
        assert not (started and removed), f"round {number}: both Start and Remove succeeded"
        assert started or removed, f"round {number}: neither succeeded: {replies}"
        listing = await ok(base, "admin.vm.List")
        if removed:
            outcomes.append("removed")
            assert exception_type(replies["admin.vm.Start"]) in (
                "QubesVMNotFoundError", "QubesVMNotHaltedError"), replies
            assert not any(line.startswith(NAME + " ") for line in listing.splitlines())
            assert not vm_dir.exists(), f"round {number}: {vm_dir} left behind"
            continue
        outcomes.append("started")
        assert exception_type(replies["admin.vm.Remove"]) == "QubesVMNotHaltedError", replies
        assert f"{NAME} class=AppVM state=Running" in listing
        # The running VM's images are all there.
        assert (vm_dir / "private.img").exists() and (vm_dir / "private-dirty.img").exists()
        assert (vm_dir / "root-dirty.img").exists() and (vm_dir / "volatile-dirty.img").exists()
        await ok(base, "admin.vm.Kill", NAME)
        await ok(base, "admin.vm.Remove", NAME)
        assert not vm_dir.exists()
    # A domain left running by a lost race would make this start fail: libvirt
    # still has a running domain of that name (of the removed VM).
    await ok(base, "admin.vm.Create.AppVM", payload=f"name={NAME} label=red".encode())
    await ok(base, "admin.vm.Start", NAME)
    await ok(base, "admin.vm.Kill", NAME)
    return outcomes


def test_start_and_remove_at_once(live_qubesd):
    outcomes = asyncio.run(race_rounds(live_qubesd))
    log = (resolve(live_qubesd).log_dir / "qubesd-embedded.log").read_text()
    assert "was removed while its domain runs" not in log
    assert "error in admin.vm" not in log  # no handler crashed
    assert "Traceback" not in log
    # Both orders happened, so both outcomes were exercised.
    assert set(outcomes) == {"removed", "started"}, outcomes
