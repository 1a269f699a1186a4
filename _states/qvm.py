"""Salt state module ``qvm``: declare VMs, their properties, features, tags and power.

State names and arguments follow Qubes' own ``qvm`` states, so existing
formulas apply unchanged; ``qvm.vm`` runs several actions on one VM in a given
or default order, skips the rest after a failure, and reports each action's
comment under a ``====== ['ACTION'] ======`` heading and its changes under
``qvm.ACTION``, the shape Qubes' tools and tests read.

What Qubes' states get wrong and these do not: ``test=True`` never changes
anything (every state works out its changes first and stops there), ``present``
enforces label, template and properties on an existing VM, and values are
compared in their property's type so a second run reports no change. The work
is in :mod:`qubes_core.mgmt`; this module only shapes Salt's returns.
"""

from __future__ import annotations

from typing import Any

from salt.exceptions import CommandExecutionError, SaltInvocationError

from qubes_core.mgmt import connection, saltext, storage, vms
from qubes_core.mgmt import firewall as vm_firewall
from qubes_core.mgmt.values import as_list, parse_bool

# Actions of ``qvm.vm`` in the order they run when ``actions`` is not given.
DEFAULT_ORDER = ["exists", "running", "missing", "halted", "absent", "present", "clone",
                 "prefs", "features", "service", "tags", "devices", "firewall", "unpause",
                 "pause", "shutdown", "kill", "start", "run"]
# States that act on a VM that must already exist.
NEEDS_VM = {"prefs", "features", "service", "tags", "devices", "firewall", "running",
            "halted", "start", "shutdown", "kill", "pause", "unpause", "run"}
# The name Qubes' ``qvm.vm`` files each action's changes under (``qvm.prefs`` reports
# as ``qvm.create`` there).
REPORTED_AS = {"present": "qvm.create", "prefs": "qvm.create", "running": "qvm.start",
               "halted": "qvm.shutdown"}


def _app():
    """The client; inside a state run it reuses what it read until something changes."""
    return connection.client(__opts__, connection.state_run(__context__,
                                                            globals().get("__running__")))


def _apply(state: str, name: str, step) -> dict[str, Any]:
    """Run ``step(app, test) -> Outcome`` and shape Salt's return; errors fail the state."""
    test = bool(__opts__.get("test", False))
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        with saltext.salt_errors():
            app = _app()
            if test and state in NEEDS_VM and not vms.exists(app, name):
                ret.update(result=None, comment=f"{name} does not exist yet: {state} would "
                                                "be applied once it is created")
                return ret
            with app.cache():
                outcome = step(app, test)
    except (SaltInvocationError, CommandExecutionError) as error:
        ret.update(result=False, comment=str(error))
        return ret
    ret["changes"] = outcome.changes
    ret["comment"] = outcome.comment
    if test and outcome.changes:
        ret["result"] = None
    return ret


def _check(state: str, name: str, passed: bool, comment: str) -> dict[str, Any]:
    return {"name": name, "result": passed, "changes": {}, "comment": comment}


# --- existence -----------------------------------------------------------------------


def _presence(state: str, name: str, want: bool) -> dict[str, Any]:
    try:
        with saltext.salt_errors():
            found = vms.exists(_app(), name)
    except (SaltInvocationError, CommandExecutionError) as error:
        return _check(state, name, False, str(error))
    return _check(state, name, found == want, f"{name} {'exists' if found else 'is missing'}")


def exists(name, *varargs, **kwargs):
    """Fail unless the VM exists (changes nothing)."""
    return _presence("exists", name, True)


def missing(name, *varargs, **kwargs):
    """Fail unless the VM is missing (changes nothing)."""
    return _presence("missing", name, False)


def present(name, *varargs, **kwargs):
    """
    The VM exists with the given ``label``, ``template``, ``mem``, ``vcpus``,
    ``class``, ``flags`` (proxy, net, hvm, standalone, hvm-template) and ``prefs``;
    an existing VM is brought to them.

    .. code-block:: yaml

        work:
          qvm.present:
            - template: debian-12
            - label: blue
            - mem: 2000
    """
    kwargs = saltext.clean(kwargs)
    return _apply("present", name, lambda app, test: vms.present(
        app, name, test=test, **saltext.creation_args(kwargs)))


def absent(name, *varargs, **kwargs):
    """The VM does not exist (killed and removed if it does)."""
    return _apply("absent", name, lambda app, test: vms.absent(app, name, test=test))


def clone(name, source, *varargs, **kwargs):
    """
    ``name`` exists, cloned from ``source`` if it did not.

    .. code-block:: yaml

        debian-12-work:
          qvm.clone:
            - source: debian-12
    """
    kwargs = saltext.clean(kwargs)
    return _apply("clone", name, lambda app, test: vms.clone(
        app, source, name, label=kwargs.get("label"), pool=kwargs.get("pool"), test=test))


def template_installed(name, *varargs, **kwargs):
    """The TemplateVM ``name`` exists, built with ``qubes-template-build`` when missing
    (options as ``qvm.template_install``: ``suite``, ``with_salt``, ``cache_dir``,
    ``label``)."""
    kwargs = saltext.clean(kwargs)
    return _apply("template_installed", name, lambda app, test: vms.install_template(
        app, name, **saltext.template_options(kwargs, __opts__), test=test))


# --- configuration ---------------------------------------------------------------------


def prefs(name, *varargs, **kwargs):
    """
    The VM's properties have these values (``*default*`` resets one).

    .. code-block:: yaml

        work:
          qvm.prefs:
            - netvm: sys-firewall
            - memory: 400
    """
    kwargs = saltext.clean(kwargs)

    def step(app, test):
        wanted = saltext.merged_mappings(kwargs.pop("set", None), "set")
        wanted.update(kwargs)
        return vms.set_prefs(app, name, wanted, test=test)

    return _apply("prefs", name, step)


def global_prefs(name, **kwargs):
    """
    The system's global properties have these values (``*default*`` resets one).

    .. code-block:: yaml

        default-netvm:
          qvm.global_prefs:
            - default_netvm: sys-firewall
    """
    wanted = saltext.clean(kwargs)
    return _apply("global_prefs", name, lambda app, test: vms.set_global_prefs(
        app, wanted, test=test))


def _by_action(varargs, kwargs, actions):
    chosen = {action: as_list(kwargs.pop(action, None), action) for action in actions}
    if varargs and varargs[0] in actions:
        chosen[varargs[0]] += [str(v) for v in varargs[1:]]
    return chosen


def service(name, *varargs, **kwargs):
    """
    Services of the VM enabled, disabled or reset to their default.

    .. code-block:: yaml

        sys-net:
          qvm.service:
            - enable: [clocksync]
            - disable: [cups]
    """
    kwargs = saltext.clean(kwargs)
    kwargs.pop("list", None)

    def step(app, test):
        chosen = _by_action(varargs, kwargs, ("enable", "disable", "default"))
        return vms.set_features(app, name, prefix="service.", test=test, **chosen)

    return _apply("service", name, step)


def features(name, *varargs, **kwargs):
    """
    Features of the VM enabled, disabled, reset (``default``) or ``set``.

    .. code-block:: yaml

        work:
          qvm.features:
            - enable: [gui]
            - set:
              - vm-config.x: value
    """
    kwargs = saltext.clean(kwargs)
    kwargs.pop("list", None)

    def step(app, test):
        values = saltext.merged_mappings(kwargs.pop("set", None), "set")
        chosen = _by_action(varargs, kwargs, ("enable", "disable", "default"))
        values.update(kwargs)
        return vms.set_features(app, name, values=values, test=test, **chosen)

    return _apply("features", name, step)


def tags(name, *varargs, **kwargs):
    """
    Tags of the VM added (``add``/``present``) or removed (``del``/``absent``).

    .. code-block:: yaml

        work:
          qvm.tags:
            - add: [backup]
    """
    kwargs = saltext.clean(kwargs)
    kwargs.pop("list", None)

    def step(app, test):
        add = as_list(kwargs.get("add"), "add") + as_list(kwargs.get("present"), "present")
        delete = as_list(kwargs.get("del"), "del") + as_list(kwargs.get("absent"), "absent")
        if varargs and varargs[0] in ("add", "present"):
            add += list(varargs[1:])
        elif varargs and varargs[0] in ("del", "absent"):
            delete += list(varargs[1:])
        return vms.set_tags(app, name, add, delete, test=test)

    return _apply("tags", name, step)


def devices(name, *varargs, **kwargs):
    """
    Host PCI devices of the VM attached or detached (``options`` for attached ones).

    .. code-block:: yaml

        sys-net:
          qvm.devices:
            - attach: ['00:19.0']
    """
    kwargs = saltext.clean(kwargs)

    def step(app, test):
        options = saltext.merged_mappings(kwargs.pop("options", None), "options")
        chosen = _by_action(varargs, kwargs, ("attach", "detach"))
        return vms.set_devices(app, name, chosen["attach"], chosen["detach"], options,
                               test=test)

    return _apply("devices", name, step)


def firewall(name, rules=None, *varargs, **kwargs):
    """
    The VM's firewall rules are exactly ``rules``; a rule with ``expire: +N``
    stays as it is while an identical one has not expired (no change each run).

    .. code-block:: yaml

        work:
          qvm.firewall:
            - rules:
              - {action: accept, dsthost: 10.0.0.1, expire: '+3600'}
              - {action: drop}
    """
    if not isinstance(rules, list):
        return _check("firewall", name, False, f"rules: expected a list, got {rules!r}")
    return _apply("firewall", name, lambda app, test: vm_firewall.set_rules(
        app, name, rules, test=test))


# --- power ------------------------------------------------------------------------------


def running(name, *varargs, **kwargs):
    """The VM runs (started, or resumed if paused)."""
    return _apply("running", name, lambda app, test: vms.start(app, name, test=test))


def start(name, *varargs, **kwargs):
    """The VM runs (started, or resumed if paused)."""
    return _apply("start", name, lambda app, test: vms.start(app, name, test=test))


def halted(name, *varargs, **kwargs):
    """The VM is halted (shut down; flag ``force`` even if others use it as netvm)."""
    return _apply("halted", name, lambda app, test: vms.shutdown(
        app, name, force="force" in saltext.pop_flags(saltext.clean(kwargs)), test=test))


def shutdown(name, *varargs, **kwargs):
    """The VM is halted (shut down; flags ``force``, ``kill``)."""
    def step(app, test):
        flags = saltext.pop_flags(saltext.clean(kwargs))
        return vms.shutdown(app, name, force="force" in flags, kill="kill" in flags, test=test)

    return _apply("shutdown", name, step)


def kill(name, *varargs, **kwargs):
    """The VM is halted (killed if it runs)."""
    return _apply("kill", name, lambda app, test: vms.shutdown(app, name, kill=True, test=test))


def pause(name, *varargs, **kwargs):
    """The VM is paused."""
    return _apply("pause", name, lambda app, test: vms.pause(app, name, test=test))


def unpause(name, *varargs, **kwargs):
    """The VM is not paused."""
    return _apply("unpause", name, lambda app, test: vms.unpause(app, name, test=test))


def run(name, cmd=None, *varargs, **kwargs):
    """Run ``cmd`` in the VM with ``qvm-run`` (always a change; nothing in test mode)."""
    kwargs = saltext.clean(kwargs)
    if cmd is None and varargs:
        cmd = " ".join(map(str, varargs))
    if not cmd:
        return _check("run", name, False, "run needs a cmd")
    if __opts__.get("test"):
        return {"name": name, "result": None, "changes": {"cmd": {"old": None, "new": cmd}},
                "comment": f"would run {cmd!r} in {name}"}
    try:
        result = __salt__["qvm.run"](name, cmd, **kwargs)
    except (SaltInvocationError, CommandExecutionError) as error:
        return _check("run", name, False, str(error))
    finally:
        _app().invalidate()  # qvm-run acts from its own process (it may start the VM)
    return {"name": name, "result": True, "changes": result["changes"],
            "comment": result["comment"]}


# --- storage ----------------------------------------------------------------------------


def pool_present(name, driver="file-reflink", **kwargs):
    """
    A storage pool exists with this driver and options; only
    ``revisions_to_keep`` changes in place.

    .. code-block:: yaml

        fast:
          qvm.pool_present:
            - driver: file-reflink
            - dir_path: /mnt/fast
            - revisions_to_keep: 2
    """
    options = saltext.clean(kwargs)
    return _apply("pool_present", name, lambda app, test: storage.pool_present(
        app, name, driver, options, test=test))


def pool_absent(name, **kwargs):
    """The storage pool does not exist (refused while volumes use it)."""
    return _apply("pool_absent", name, lambda app, test: storage.pool_absent(app, name,
                                                                              test=test))


def pool_migrated(name, setup_check=True, **kwargs):
    """
    The pool ``name`` uses the ``file-reflink`` driver (moved from ``file`` if
    needed; its VMs must be halted and qubesd must not be serving it, unless
    this run started it).
    """
    test = bool(__opts__.get("test", False))
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        with saltext.salt_errors():
            outcome, restarted = storage.migrate(
                connection.base_dir_from_opts(__opts__), _app(), [name],
                setup_check=parse_bool(setup_check, "setup_check"), test=test)
    except (SaltInvocationError, CommandExecutionError) as error:
        ret.update(result=False, comment=str(error))
        return ret
    if restarted:
        connection.forget(__opts__)
    ret.update(changes=outcome.changes, comment=outcome.comment)
    if test and outcome.changes:
        ret["result"] = None
    return ret


# --- the combined state -----------------------------------------------------------------


def _action_and_mode(entry: Any) -> tuple[str, str]:
    if isinstance(entry, dict) and len(entry) == 1:
        action, mode = next(iter(entry.items()))
        return str(action), str(mode or "fail")
    return str(entry), "fail"


def _options(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """An action's YAML list as (positional words, keyword options)."""
    if value is None:
        return [], {}
    if isinstance(value, dict):
        return [], dict(value)
    if not isinstance(value, list):
        return [value], {}
    words, options = [], {}
    for item in value:
        if isinstance(item, dict):
            options.update(item)
        else:
            words.append(item)
    return words, options


def _reported(action: str, changes: dict[str, Any]) -> dict[str, Any]:
    if action == "tags" and set(changes) == {"tags"}:
        return {"qvm.tags": changes["tags"]}
    return {REPORTED_AS.get(action, "qvm." + action): changes}


def vm(name, **kwargs):
    """
    Several actions on one VM, in the order of ``actions`` (else the default
    order); after a failed action the rest are skipped. An action listed as
    ``{kill: pass}`` may fail without failing the state.

    .. code-block:: yaml

        work:
          qvm.vm:
            - present:
              - label: blue
            - prefs:
              - netvm: sys-firewall
            - tags:
              - add: [backup]
            - actions: [present, prefs, tags]
    """
    kwargs = saltext.clean(kwargs)
    order = kwargs.pop("actions", DEFAULT_ORDER)
    test = bool(__opts__.get("test", False))
    ret = {"name": name, "changes": {}, "result": None if test else True, "comment": ""}
    planned = [_action_and_mode(entry) for entry in order]
    known = {action for action, _ in planned}
    for action in kwargs:
        if action not in known or action not in DEFAULT_ORDER:
            ret.update(result=False, comment=f"Unknown action keyword: {action}")
            return ret
    failed = False
    sections = []
    for action, mode in planned:
        if action not in kwargs:
            continue
        heading = f"====== ['{action}'] ======\n"
        if failed and not test:
            sections.append(heading + "[SKIP] Skipping due to previous failure!")
            continue
        words, options = _options(kwargs[action])
        result = globals()[action](name, *words, **options)
        if result["result"] is False and "pass" not in mode.lower():
            failed = True
            ret["result"] = False
        if result["changes"]:
            ret["changes"]["qvm." + action] = _reported(action, result["changes"])
        sections.append(heading + (result["comment"] or ""))
    ret["comment"] = "\n\n".join(sections)
    if not test and not failed:
        ret["result"] = True
    return ret
