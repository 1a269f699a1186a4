"""Salt execution module ``qvm``: manage the VMs of a qubes_core installation.

Function names and argument conventions follow Qubes' own ``qvm`` module, so
formulas and command lines written for Qubes run unchanged: the VM name comes
first, switches are ``flags=[...]``, options ``key=value`` (names with dashes
or underscores). This module only reads arguments and shapes returns; the work
is done by :mod:`qubes_core.mgmt` through the Admin API. The installation is
the one named by the ``qubes.base_dir`` minion option, else
``$QUBES_BASE_DIR``, else the production paths; when no qubesd listens there,
one is started for the duration of the command.

Calls that change something return ``{"result", "changes", "comment"}``;
under ``test=True`` nothing changes, ``changes`` is what would change and
``"test": True`` marks the dry run. Bad names and
values raise ``SaltInvocationError``, failures ``CommandExecutionError``, each
with one line saying what was wrong.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import Any

from qubes_core import exc
from qubes_core.mgmt import connection, storage, vms
from qubes_core.mgmt import firewall as vm_firewall
from qubes_core.mgmt.errors import UsageError
from qubes_core.mgmt.outcome import CheckStatus, Outcome
from qubes_core.mgmt.saltext import (
    clean,
    creation_args,
    merged_mappings,
    pop_flags,
    pop_test,
    salt_errors,
    template_options,
)
from qubes_core.mgmt.values import as_list, parse_bool


def _app():
    return connection.client(__opts__)


def _adapter(func):
    """Translate library errors into Salt's; keep the signature and docstring."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with salt_errors(f"qvm.{func.__name__}"):
            return func(*args, **clean(kwargs))

    return wrapper


def _result(outcome: Outcome, test: bool) -> dict[str, Any]:
    ret = {"result": True, "changes": outcome.changes, "comment": outcome.comment}
    if test:
        ret["test"] = True
    return ret


# --- checks and state --------------------------------------------------------------


@_adapter
def check(name, *varargs, **kwargs):
    """
    Check that a VM exists (default) or is missing.

    Returns a status that formulas can ask ``.passed()``.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.check work exists
        salt-call qvm.check work missing
    """
    which = (varargs[0] if varargs else kwargs.pop("check", "exists")).lower()
    if which not in ("exists", "missing"):
        raise UsageError(f"check must be exists or missing, not {which!r}")
    found = vms.exists(_app(), name)
    passed = found if which == "exists" else not found
    return CheckStatus(passed, f"{name} {'exists' if found else 'is missing'}")


@_adapter
def state(name, *varargs, **kwargs):
    """
    The power state of a VM (``halted``, ``running``, ``paused``, ...), or, given
    states, a status that passes when the VM is in one of them.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.state work
        salt-call qvm.state work running
    """
    current = vms.power_state(_app(), name)
    wanted = [s.lower() for s in varargs if s != "status"] + \
        [s.lower() for s in as_list(kwargs.get("state"), "state") if s != "status"]
    if not wanted:
        return current
    return CheckStatus(current in wanted, f"{name} is {current}", state=current)


# --- existence ---------------------------------------------------------------------

@_adapter
def create(name, **kwargs):
    """
    Create a VM.

    Options: ``label``, ``template``, ``class`` (AppVM, TemplateVM,
    StandaloneVM), ``pool``, ``mem``, ``vcpus``, ``prefs`` (a mapping of
    properties); flags: ``proxy``, ``net``, ``hvm``, ``hvm-template``,
    ``standalone``.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.create work label=blue template=debian-12
        salt-call qvm.create sys-net label=red flags='[net]'
    """
    test = pop_test(kwargs, __opts__)
    args = creation_args(kwargs)
    args["vmclass"] = args["vmclass"] or "AppVM"
    return _result(vms.create(_app(), name, test=test, **args), test)


@_adapter
def remove(name, **kwargs):
    """
    Remove a VM (killed first if it runs).

    CLI Example:

    .. code-block:: bash

        salt-call qvm.remove untrusted-old
    """
    test = pop_test(kwargs, __opts__)
    pop_flags(kwargs)
    return _result(vms.absent(_app(), name, test=test), test)


@_adapter
def clone(name, clone, **kwargs):
    """
    Clone the VM ``name`` as ``clone``: properties, features, tags, firewall
    and the volumes it keeps.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.clone debian-12 debian-12-work
    """
    test = pop_test(kwargs, __opts__)
    pop_flags(kwargs)
    return _result(vms.clone(_app(), name, clone, label=kwargs.get("label"),
                             pool=kwargs.get("pool"), test=test), test)


# --- properties ----------------------------------------------------------------------


@_adapter
def prefs(name, *varargs, **kwargs):
    """
    List, get or set a VM's properties.

    Without arguments all properties are listed; names alone (or ``get=[...]``)
    are read; ``key=value`` (or ``set=[{key: value}]``) are set, and the value
    ``*default*`` resets a property. Names may use dashes or underscores;
    ``pcidevs`` and ``pci-strictreset`` manage PCI assignments.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.prefs work
        salt-call qvm.prefs work memory maxmem
        salt-call qvm.prefs work memory=600 netvm=sys-firewall
        salt-call qvm.prefs work memory='*default*'
    """
    test = pop_test(kwargs, __opts__)
    action = kwargs.pop("action", None)
    get = list(varargs) + as_list(kwargs.pop("get", None), "get")
    wanted = merged_mappings(kwargs.pop("set", None), "set")
    wanted.update(kwargs)
    if action in ("get", "list") or not wanted:
        return vms.read_prefs(_app(), name, get)
    if get:
        raise UsageError("give either properties to read or key=value to set, not both")
    return _result(vms.set_prefs(_app(), name, wanted, test=test), test)


@_adapter
def global_prefs(*varargs, **kwargs):
    """
    List, get or set the system's global properties (what ``qubes-prefs`` does):
    ``default_netvm``, ``default_template``, ``clockvm``, ``management_dispvm``, ...
    ``*default*`` resets one.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.global_prefs
        salt-call qvm.global_prefs default_netvm
        salt-call qvm.global_prefs default_netvm=sys-firewall
    """
    test = pop_test(kwargs, __opts__)
    if not kwargs:
        return vms.read_global_prefs(_app(), varargs)
    if varargs:
        raise UsageError("give either properties to read or key=value to set, not both")
    return _result(vms.set_global_prefs(_app(), kwargs, test=test), test)


def _names_by_action(varargs, kwargs, actions):
    """``enable svc1 svc2`` positional form, or ``enable=[...]`` keywords."""
    chosen = {action: as_list(kwargs.pop(action, None), action) for action in actions}
    if varargs:
        if varargs[0] not in actions and varargs[0] != "list":
            raise UsageError(f"unknown action {varargs[0]!r} (one of list, "
                                 f"{', '.join(actions)})")
        if varargs[0] != "list":
            chosen[varargs[0]] += [str(v) for v in varargs[1:]]
    return chosen


@_adapter
def service(name, *varargs, **kwargs):
    """
    List, enable, disable or reset (``default``) a VM's services
    (its ``service.*`` features).

    CLI Example:

    .. code-block:: bash

        salt-call qvm.service sys-net
        salt-call qvm.service work enable cups
        salt-call qvm.service work enable='[cups]' disable='[crond]' default='[meminfo-writer]'
    """
    test = pop_test(kwargs, __opts__)
    kwargs.pop("list", None)
    chosen = _names_by_action(varargs, kwargs, ("enable", "disable", "default"))
    if not any(chosen.values()):
        return {key: value == "1" for key, value in
                vms.read_features(_app(), name, "service.").items()}
    return _result(vms.set_features(_app(), name, prefix="service.", test=test, **chosen),
                   test)


@_adapter
def features(name, *varargs, **kwargs):
    """
    List, enable, disable, reset (``default``) or set a VM's features.

    ``set`` takes a mapping (or a list of ``key: value``); other ``key=value``
    arguments are set too.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.features work
        salt-call qvm.features work enable='[gui]' set='{vm-config.x: "1"}'
        salt-call qvm.features work default='[gui]'
    """
    test = pop_test(kwargs, __opts__)
    kwargs.pop("list", None)
    values = merged_mappings(kwargs.pop("set", None), "set")
    chosen = _names_by_action(varargs, kwargs, ("enable", "disable", "default"))
    values.update(kwargs)
    if not any(chosen.values()) and not values:
        return vms.read_features(_app(), name)
    return _result(vms.set_features(_app(), name, values=values, test=test, **chosen), test)


@_adapter
def tags(name, *varargs, **kwargs):
    """
    List, add or delete a VM's tags (``present``/``absent`` are accepted too).

    CLI Example:

    .. code-block:: bash

        salt-call qvm.tags work
        salt-call qvm.tags work add backup-daily
        salt-call qvm.tags work add='[a, b]' del='[c]'
    """
    test = pop_test(kwargs, __opts__)
    kwargs.pop("list", None)
    for alias, action in (("present", "add"), ("absent", "del")):
        if alias in kwargs:
            kwargs[action] = as_list(kwargs.get(action), action) + as_list(
                kwargs.pop(alias), alias)
    if varargs and varargs[0] in ("present", "absent"):
        varargs = ({"present": "add", "absent": "del"}[varargs[0]], *varargs[1:])
    chosen = _names_by_action(varargs, kwargs, ("add", "del"))
    if not any(chosen.values()):
        return sorted(vms.get(_app(), name).tags)
    return _result(vms.set_tags(_app(), name, chosen["add"], chosen["del"], test=test), test)


@_adapter
def devices(name, *varargs, **kwargs):
    """
    List, attach or detach a VM's PCI devices (``00:1f.2``, ``dom0:00_1f.2`` or
    ``pci:dom0:00_1f.2``); ``options`` apply to attached devices, e.g.
    ``{no-strict-reset: True}``.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.devices sys-net
        salt-call qvm.devices sys-net attach 00:19.0
        salt-call qvm.devices sys-net detach='[00:19.0]'
    """
    test = pop_test(kwargs, __opts__)
    kwargs.pop("list", None)
    options = merged_mappings(kwargs.pop("options", None), "options")
    chosen = _names_by_action(varargs, kwargs, ("attach", "detach"))
    if not any(chosen.values()):
        return vms.pci_assigned(_app(), name)
    return _result(vms.set_devices(_app(), name, chosen["attach"], chosen["detach"],
                                   options, test=test), test)


@_adapter
def firewall(name, rules=None, **kwargs):
    """
    List a VM's firewall rules, or replace them by ``rules``: a list of
    mappings (``action``, ``proto``, ``dsthost``, ``dstports``, ``icmptype``,
    ``specialtarget``, ``expire``, ``comment``) or API text lines. ``expire``
    is seconds since the epoch, or ``+N`` seconds from now.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.firewall work
        salt-call qvm.firewall work rules="[{action: accept, dsthost: 10.0.0.1}, {action: drop}]"
    """
    test = pop_test(kwargs, __opts__)
    if rules is None:
        return vm_firewall.read_rules(_app(), name)
    if not isinstance(rules, list):
        raise UsageError(f"rules: expected a list, got {rules!r}")
    return _result(vm_firewall.set_rules(_app(), name, rules, test=test), test)


# --- power ---------------------------------------------------------------------------


def _power(func, name, kwargs, **extra):
    test = pop_test(kwargs, __opts__)
    return _result(func(_app(), name, test=test, **extra), test)


@_adapter
def start(name, **kwargs):
    """
    Start a VM (its netvm chain first); resumes a paused one.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.start work
    """
    pop_flags(kwargs)
    return _power(vms.start, name, kwargs)


@_adapter
def shutdown(name, **kwargs):
    """
    Shut a VM down; flags ``force`` (even if others use it as netvm),
    ``kill``; ``wait`` is the default.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.shutdown work flags='[force]'
    """
    flags = pop_flags(kwargs)
    return _power(vms.shutdown, name, kwargs, force="force" in flags, kill="kill" in flags)


@_adapter
def kill(name, **kwargs):
    """
    Kill a VM.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.kill work
    """
    pop_flags(kwargs)
    return _power(vms.shutdown, name, kwargs, kill=True)


@_adapter
def pause(name, **kwargs):
    """
    Pause a running VM.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.pause work
    """
    return _power(vms.pause, name, kwargs)


@_adapter
def unpause(name, **kwargs):
    """
    Resume a paused VM.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.unpause work
    """
    return _power(vms.unpause, name, kwargs)


@_adapter
def run(name, cmd, **kwargs):
    """
    Run a command in a VM with ``qvm-run`` (where the runtime can run
    commands); ``user`` picks the user, flag ``auto`` starts the VM first.
    Returns the command's output; a non-zero exit is an error naming it.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.run work 'touch /home/user/x' user=user
        salt-call qvm.run work 'id -un' flags=[auto]
    """
    test = pop_test(kwargs, __opts__)
    flags = pop_flags(kwargs)
    user = kwargs.pop("user", None)
    if kwargs:
        raise UsageError(f"unknown option(s): {', '.join(sorted(kwargs))} (known: user, flags)")
    if not cmd or not isinstance(cmd, str):
        raise UsageError(f"a command line is needed, got {cmd!r}")
    vms.get(_app(), name)
    options = ["--pass-io"] + (["--user", str(user)] if user else [])
    if "auto" not in flags:
        options.append("--no-autostart")
    shown = " ".join(["qvm-run", *options, name, repr(cmd)])
    if test:
        return {"result": True, "test": True, "changes": {}, "comment": "would run: " + shown}
    env = dict(os.environ)
    base_dir = connection.base_dir_from_opts(__opts__)
    if base_dir:
        env["QUBES_BASE_DIR"] = base_dir
    done = subprocess.run([sys.executable, "-m", "qubes_core.cli.qvm_run", *options, "--",
                           name, cmd], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise exc.QubesException(f"{cmd!r} in {name} exited {done.returncode}: "
                                 + " ".join((done.stderr or done.stdout).split())[:200])
    return {"result": True, "changes": {"cmd": {"old": None, "new": cmd}},
            "comment": done.stdout, "retcode": 0}


# --- templates and DispVMs ------------------------------------------------------------


@_adapter
def template_info(name):
    """
    A template's class, properties and features.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.template_info debian-12
    """
    vm = vms.get(_app(), name)
    return {"name": name, "class": vm.klass, "prefs": vms.read_prefs(_app(), name),
            "features": vms.read_features(_app(), name)}


@_adapter
def template_install(name, **kwargs):
    """
    Make sure the TemplateVM ``name`` exists: when missing, build it with
    ``qubes-template-build`` (Debian ``suite``, by default from the name:
    ``debian-12`` is bookworm, ``debian-13`` trixie; ``with_salt=True``
    installs Salt inside; ``cache_dir`` holds the built root file systems;
    ``label``, default black). ``test=True`` says what would be built.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.template_install debian-12
        salt-call qvm.template_install tpl-salt suite=trixie with_salt=True
    """
    test = pop_test(kwargs, __opts__)
    return _result(vms.install_template(_app(), name, **template_options(kwargs, __opts__),
                                        test=test), test)


@_adapter
def create_disposable(name=None, **kwargs):
    """
    Create a DispVM from the AppVM ``name`` (else the global ``default_dispvm``);
    its name is in ``changes``.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.create_disposable default-dvm
    """
    test = pop_test(kwargs, __opts__)
    return _result(vms.create_disposable(_app(), name, test=test), test)


# --- storage --------------------------------------------------------------------------


@_adapter
def pools():
    """
    The storage pools with their driver and options.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.pools
    """
    app = _app()
    return {pool: storage.pool_info(app, pool) for pool in storage.pools(app)}


@_adapter
def pool_add(name, driver, **kwargs):
    """
    Add a storage pool (``driver`` e.g. file-reflink; options such as
    ``dir_path``, ``revisions_to_keep``, ``setup_check=no``), or bring an
    existing pool's ``revisions_to_keep`` to the value given.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.pool_add fast file-reflink dir_path=/mnt/fast
    """
    test = pop_test(kwargs, __opts__)
    return _result(storage.pool_present(_app(), name, driver, kwargs, test=test), test)


@_adapter
def pool_remove(name, **kwargs):
    """
    Remove a storage pool no volume uses.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.pool_remove fast
    """
    test = pop_test(kwargs, __opts__)
    return _result(storage.pool_absent(_app(), name, test=test), test)


@_adapter
def pool_migrate(*pool_names, **kwargs):
    """
    Move ``file`` pools (named, else all) to the ``file-reflink`` driver; every
    VM of the pool must be halted. ``setup_check=False`` accepts a filesystem
    that cannot reflink (slow full copies).

    CLI Example:

    .. code-block:: bash

        salt-call qvm.pool_migrate varlibqubes
    """
    test = pop_test(kwargs, __opts__)
    setup_check = parse_bool(kwargs.pop("setup_check", True), "setup_check")
    outcome, restarted = storage.migrate(connection.base_dir_from_opts(__opts__), _app(),
                                         list(pool_names), setup_check=setup_check, test=test)
    if restarted:
        connection.forget(__opts__)
    return _result(outcome, test)


@_adapter
def volumes(name):
    """
    A VM's volumes with their pool, size, usage and flags.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.volumes work
    """
    app = _app()
    return {volume: storage.volume_info(app, name, volume)
            for volume in storage.volumes(app, name)}


@_adapter
def volume_revisions(name, volume):
    """
    The revisions a volume keeps (what ``qvm.volume_revert`` can go back to).

    CLI Example:

    .. code-block:: bash

        salt-call qvm.volume_revisions work private
    """
    return storage.revisions(_app(), name, volume)


@_adapter
def volume_revert(name, volume, revision=None, **kwargs):
    """
    Bring a halted VM's volume back to a kept revision (default: the newest).

    CLI Example:

    .. code-block:: bash

        salt-call qvm.volume_revert work private
    """
    test = pop_test(kwargs, __opts__)
    return _result(storage.revert(_app(), name, volume, revision, test=test), test)


@_adapter
def volume_resize(name, volume, size, **kwargs):
    """
    Grow a volume to ``size`` (bytes, or with K, M, G, T).

    CLI Example:

    .. code-block:: bash

        salt-call qvm.volume_resize work private 4G
    """
    test = pop_test(kwargs, __opts__)
    return _result(storage.resize(_app(), name, volume, size, test=test), test)


# --- policy ---------------------------------------------------------------------------


@_adapter
def policy_explain(source, target, service, trace=False):
    """
    The qrexec policy's decision on a call from ``source`` to ``target`` of
    ``SERVICE[+ARG]``, and the rule behind it.

    CLI Example:

    .. code-block:: bash

        salt-call qvm.policy_explain work @default qubes.Filecopy
    """
    from qubes_core.mgmt.policy import explain_call

    return explain_call(connection.base_dir_from_opts(__opts__), source, target, service,
                        trace=parse_bool(trace, "trace"))
