"""``admin.vm.notes.Get`` / ``Set``: free text a user keeps about a VM.

As in Qubes, the notes live in ``notes.txt`` in the VM's own directory (not in
qubes.xml), are UTF-8 within the 64 KiB request limit, and every character that is not
safe to display (controls other than tab and newline, bidirectional and other
format characters, unassigned and private-use code points, line and paragraph
separators) is replaced by ``_`` before they are written, so that a tool that
shows them cannot be tricked. dom0 has no notes. A write replaces the file
atomically.
"""

from __future__ import annotations

import unicodedata

from qubes_core import exc, fsutil, protocol
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method

NOTES_FILE = "notes.txt"
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def sanitize_notes(text: str) -> str:
    """``text`` with every character unsafe to display replaced by ``_``."""
    return "".join(
        char if char in "\t\n" or unicodedata.category(char) not in UNSAFE_CATEGORIES
        else "_" for char in text)


@method("admin.vm.notes.Get", scope="local", read=True)
async def notes_get(call: ApiCall) -> str:
    """The VM's notes; empty when it has none."""
    vm = call.dest_vm()
    try:
        return (vm.dir_path / NOTES_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as err:
        raise exc.QubesException(f"cannot read the notes of {call.dest}: {err}") from None


@method("admin.vm.notes.Set", scope="local", write=True, payload=True,
        max_payload=protocol.MAX_REQUEST)
async def notes_set(call: ApiCall) -> None:
    """Replace the VM's notes with the payload (UTF-8, made safe to display)."""
    vm = call.dest_vm()
    try:
        text = call.payload.decode("utf-8")
    except UnicodeDecodeError:
        raise exc.ProtocolError("notes must be UTF-8 text") from None
    path = vm.dir_path / NOTES_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(path, sanitize_notes(text), mode=0o644)
    except OSError as err:
        raise exc.QubesException(f"cannot write the notes of {call.dest}: {err}") from None
