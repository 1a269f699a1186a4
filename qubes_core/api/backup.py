"""``admin.backup.Execute``, ``Info`` and ``Cancel``: backups by profile, as Qubes runs
them (profiles in ``etc/qubes/backup/NAME.conf``, see :mod:`qubes_core.backup.profile`).

Invariant: one backup per profile at a time, and the server is never held up by
one: the archive is written in a worker thread, without the write lock; only the
``backup_timestamp`` of the VMs backed up is a change of the model, made (and
saved) once the backup file is complete. Progress goes out as the app event
``backup-progress`` (``backup_profile``, ``progress`` in percent).

Backups are written to a file in dom0 with the passphrase of the profile's
``passphrase_text``. A ``destination_vm`` other than dom0 and a ``passphrase_vm``
need a service call from dom0 into a VM (``qubes.Backup``,
``qubes.BackupPassphrase``), which the runtimes here do not offer: such a profile
is refused with that reason.
"""

from __future__ import annotations

import asyncio
import time

from qubes_core import exc
from qubes_core.api.call import ApiCall
from qubes_core.api.registry import method
from qubes_core.backup.profile import BackupProfile, load_profile, profile_dir
from qubes_core.backup.writer import BackupWriter, plan, qubes_xml_for_backup, summary, target_path


def _running(call: ApiCall) -> dict[str, BackupWriter]:
    """The backups running now, by profile name (kept by the server)."""
    return call.served().running_backups


def _profile(call: ApiCall) -> BackupProfile:
    return load_profile(profile_dir(call.served().paths),
                        call.require_arg("a backup profile name"))


def _check_destination(call: ApiCall, profile: BackupProfile) -> bytes:
    """The passphrase; refused for what this installation cannot do."""
    if profile.destination_vm not in ("dom0", "@adminvm"):
        if profile.destination_vm not in call.app.domains:
            raise exc.QubesException(f"backup profile {profile.name!r}: destination_vm "
                                     f"{profile.destination_vm!r} does not exist")
        raise exc.QubesException(
            f"backup profile {profile.name!r}: writing a backup into a VM "
            f"({profile.destination_vm}) needs the qubes.Backup service call, which this "
            "runtime does not offer; set destination_vm to dom0")
    if profile.passphrase is None:
        raise exc.QubesException(
            f"backup profile {profile.name!r}: set passphrase_text (asking a passphrase_vm "
            "needs the qubes.BackupPassphrase service call, which this runtime does not "
            "offer)")
    return profile.passphrase


@method("admin.backup.Execute", scope="global", read=True, write=True, execute=True,
        argument=True, dest="adminvm", own_write_lock=True)
async def backup_execute(call: ApiCall) -> None:
    """Write the backup the profile describes; returns once the file is complete."""
    profile = _profile(call)
    passphrase = _check_destination(call, profile)
    running = _running(call)
    if profile.name in running:
        raise exc.BackupAlreadyRunningError(f"a backup of profile {profile.name!r} runs already")
    target = target_path(profile.destination_path)
    contents = await plan(call.app, profile)
    if not contents:
        raise exc.QubesException(f"backup profile {profile.name!r} selects no VM")
    loop = asyncio.get_running_loop()
    app = call.app
    last = [-1]

    async def announce(percent: int) -> None:
        await app.fire_event_async("backup-progress", backup_profile=profile.name,
                                   progress=percent)

    def progress(percent: int) -> None:
        """From the writer's thread: waits until the event was handled (at most 101
        times a backup), so that a Cancel made by a handler stops the very next read."""
        if percent != last[0]:
            last[0] = percent
            asyncio.run_coroutine_threadsafe(announce(percent), loop).result()

    writer = BackupWriter(target, passphrase, profile.compression,
                          qubes_xml_for_backup(app, contents), contents, progress)
    running[profile.name] = writer
    try:
        await asyncio.to_thread(writer.write)
    finally:
        del running[profile.name]
    async with call.model_change():
        stamp = int(time.time())
        for content in contents:
            if app.domains.get(content.vm.qid) is content.vm:
                content.vm.backup_timestamp = stamp


@method("admin.backup.Info", scope="local", read=True, argument=True, dest="adminvm")
async def backup_info(call: ApiCall) -> str:
    """What the profile's backup would hold: a table of VMs with their type and size."""
    profile = _profile(call)
    return summary(call.app, await plan(call.app, profile))


@method("admin.backup.Cancel", scope="global", execute=True, argument=True, dest="adminvm")
async def backup_cancel(call: ApiCall) -> None:
    """Stop the running backup of the profile; its partial file is removed."""
    name = call.require_arg("a backup profile name")
    writer = _running(call).get(name)
    if writer is None:
        raise exc.QubesException(f"no backup of profile {name[:64]!r} is running")
    writer.cancelled.set()
