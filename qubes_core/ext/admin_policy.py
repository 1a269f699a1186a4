"""The qrexec policy inside qubesd: Admin API permission for calls from VMs, clockvm.

At ``qubesd-start`` the default policy and qubes-rpc entries are generated
from the method registry into the installation's etc tree, and the policy
directory is watched (edits apply within a second). A call from a VM is
granted when the policy allows it with ``target=dom0``; listings of all VMs
(``admin.vm.List``, ``admin.Events`` to dom0) are filtered to the VMs the
policy would let the caller name one by one. ``qubes.GetDate`` is redirected
to the clockvm by a policy file that follows the ``clockvm`` property.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubes_core import exc, fsutil
from qubes_core.ext import Extension, app_handler, vm_handler
from qubes_core.labels import Label
from qubes_core.paths import Paths, installed_at
from qubes_core.policy.evaluate import ModelSystem, Request
from qubes_core.policy.generate import clockvm_policy
from qubes_core.policy.watch import PolicyWatcher
from qubes_core.vm.base import BaseVM

if TYPE_CHECKING:
    from qubes_core.api.server import QubesdServer
    from qubes_core.app import Qubes

log = logging.getLogger("qubes.ext.admin_policy")

CLOCKVM_POLICY = "50-clockvm.policy"


def paths_of(app: Qubes) -> Paths | None:
    """The installation paths of an app opened from a qubes.xml (None without one)."""
    if app.store is None:
        return None
    return installed_at(app.base_dir)


def write_clockvm_policy(policy_dir: Path, clockvm: BaseVM | None) -> bool:
    """Make the GetDate redirect match ``clockvm``; return whether a file changed."""
    path = Path(policy_dir) / CLOCKVM_POLICY
    if clockvm is None:
        if path.exists():
            path.unlink()
            log.info("removed %s: no clockvm", path)
            return True
        return False
    content = clockvm_policy(clockvm.name)
    if path.is_file() and path.read_text(encoding="utf-8") == content:
        return False
    fsutil.write_atomic(path, content)
    log.info("wrote %s: qubes.GetDate goes to %s", path, clockvm.name)
    return True


class AdminPolicyExtension(Extension):
    """Admin API permission for calls from VMs, decided by the watched qrexec policy.

    Also installs the generated policy when qubesd starts, and keeps the ``qubes.GetDate``
    redirect following ``clockvm``.
    """

    def __init__(self) -> None:
        self._watchers: dict[int, tuple[Qubes, PolicyWatcher]] = {}

    def watcher(self, app: Qubes) -> PolicyWatcher | None:
        """The policy watcher of an app served by qubesd (None when not served)."""
        entry = self._watchers.get(id(app))
        return entry[1] if entry is not None and entry[0] is app else None

    # --- qubesd lifecycle ---------------------------------------------------

    @app_handler("qubesd-start")
    async def on_qubesd_start(self, app: Qubes, event: str, server: QubesdServer | None = None,
                              **kwargs: Any) -> None:
        from qubes_core.api.registry import all_methods
        from qubes_core.policy.install import install

        paths = server.paths if server is not None else paths_of(app)
        if paths is None:
            return
        try:
            install(all_methods(), paths)
            write_clockvm_policy(paths.policy_dir, app.clockvm)
        except OSError:
            log.exception("cannot write the generated policy under %s", paths.etc_dir)
        watcher = PolicyWatcher(paths.policy_dir, paths.rpc_dir / "policy")
        watcher.start()
        self._watchers[id(app)] = (app, watcher)

    @app_handler("qubesd-stop")
    async def on_qubesd_stop(self, app: Qubes, event: str, **kwargs: Any) -> None:
        entry = self._watchers.pop(id(app), None)
        if entry is not None and entry[0] is app:
            await entry[1].stop()

    # --- Admin API permission ------------------------------------------------

    @vm_handler("admin-permission:*")
    def on_admin_permission(self, vm: BaseVM, event: str, dest: BaseVM | None = None,
                            arg: str = "",
                            method: str = "", **kwargs: Any) -> Any:
        if vm.qid == 0:
            return None
        watcher = self.watcher(vm.app)
        if watcher is None:
            return None  # not served by qubesd: nothing grants, the server refuses
        from qubes_core.api.registry import get_method

        spec = get_method(method)
        system = ModelSystem(vm.app)
        target = dest.name if dest is not None else "dom0"
        decision = watcher.evaluate(Request(method, arg or "", vm.name, target), system)
        if not decision.allowed or decision.target != "dom0":
            reason = decision.reason if not decision.allowed else \
                f"{decision.reason} sends it to {decision.target}, not dom0"
            raise exc.PermissionDenied(f"{method}+{arg or ''} from {vm.name} to {target}: "
                                       f"{reason}")
        if spec is not None and spec.dest == "any" and dest is not None and dest.qid == 0:
            return [True, self._listing_filter(watcher, method, arg or "", vm, system)]
        return True

    @staticmethod
    def _listing_filter(watcher: PolicyWatcher, method: str, arg: str, vm: BaseVM,
                        system: ModelSystem) -> Callable[[object], bool]:
        def allowed(item: object) -> bool:
            # Listed VMs and labels are named in the policy; other items (pool names) pass.
            if not isinstance(item, (BaseVM, Label)):
                return True
            decision = watcher.evaluate(Request(method, arg, vm.name, item.name), system)
            return decision.allowed and decision.target == "dom0"

        return allowed

    # --- clockvm -------------------------------------------------------------

    @app_handler("property-set:clockvm")
    def on_clockvm_set(self, app: Qubes, event: str, name: str, newvalue: Any,
                       oldvalue: Any = None) -> None:
        self._update_clockvm(app, newvalue)

    @app_handler("property-reset:clockvm")
    def on_clockvm_reset(self, app: Qubes, event: str, name: str, oldvalue: Any = None
                         ) -> None:
        self._update_clockvm(app, None)

    def _update_clockvm(self, app: Qubes, clockvm: BaseVM | None) -> None:
        paths = paths_of(app)
        if paths is None or not paths.policy_dir.is_dir():
            return  # no policy installed yet: qubesd-start writes it
        try:
            write_clockvm_policy(paths.policy_dir, clockvm)
        except OSError:
            log.exception("cannot update %s", paths.policy_dir / CLOCKVM_POLICY)
