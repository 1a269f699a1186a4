"""Bring one VM to a wanted configuration: create, properties, features, tags, power.

Every function reads the current state first, works out what differs, and only
then writes; with ``test=True`` it stops after working that out, so a dry run
changes nothing and reports exactly what a real run would change. Values are
compared through :mod:`qubes_core.mgmt.values`, which is why a second run of
the same configuration reports no change. A bad name or value raises
:class:`~qubes_core.mgmt.errors.UsageError` before anything is written; a
creation whose later steps fail removes the VM it created.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from qubes_core import exc
from qubes_core.client.app import ClientVM, Qubes
from qubes_core.mgmt import storage
from qubes_core.mgmt.errors import UsageError
from qubes_core.mgmt.outcome import Outcome
from qubes_core.mgmt.values import (
    DEFAULT,
    Property,
    as_list,
    coerce,
    feature_value,
    parse_bool,
    parse_get_all,
    property_name,
    same,
    wire,
)

VM_CLASSES = ("AppVM", "TemplateVM", "StandaloneVM", "DispVM")
# Properties a clone does not take from its source (identity, runtime, per-VM history).
NOT_CLONED = frozenset({"name", "qid", "uuid", "ip", "dispid", "auto_cleanup", "start_time",
                        "xid", "stubdom_xid", "backup_timestamp", "label", "template"})
PCI_RE = re.compile(r"^(?:pci:)?(?:(?P<backend>[A-Za-z][\w-]*)[:+])?"
                    r"(?P<bus>[0-9a-fA-F]{2})[:_](?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$")


def exists(app: Qubes, name: str) -> bool:
    """Whether a VM of that name exists (one ``admin.vm.List``)."""
    return str(name) in app.domains


def get(app: Qubes, name: str) -> ClientVM:
    """The VM, or ``QubesVMNotFoundError`` naming it."""
    if not name or not isinstance(name, str):
        raise UsageError(f"a VM name is needed, got {name!r}")
    return app.domains[name]


def power_state(app: Qubes, name: str) -> str:
    """``halted``, ``running``, ``paused``, ... (lower case, as Qubes' salt reports it)."""
    return get(app, name).get_power_state().lower()


def properties(app: Qubes, name: str) -> dict[str, Property]:
    """Every property of the VM with its type and whether it follows its default."""
    get(app, name)
    return parse_get_all(app, app.call("admin.vm.property.GetAll", name))


# --- properties ------------------------------------------------------------------


def read_prefs(app: Qubes, name: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """Values of the named properties (all when none are named); PCI as ``pcidevs``."""
    props = properties(app, name)
    wanted = [property_name(key) for key in keys] or sorted(props)
    found: dict[str, Any] = {}
    for key in wanted:
        if key == "pcidevs":
            found[key] = sorted(pci_assigned(app, name))
        elif key == "pci_strictreset":
            found[key] = all("no-strict-reset" not in opts
                             for opts in pci_assigned(app, name).values())
        elif key not in props:
            raise UsageError(f"VM {name!r} has no property {key!r}")
        else:
            found[key] = props[key].value
    return found


def set_prefs(app: Qubes, name: str, wanted: Mapping[str, Any], test: bool = False
              ) -> Outcome:
    """Give the VM these property values (``*default*`` resets one); report what changed."""
    props = properties(app, name)
    wanted = {property_name(key): value for key, value in wanted.items()}
    pcidevs = wanted.pop("pcidevs", None)
    strict = wanted.pop("pci_strictreset", True)
    outcome, plan = _plan_properties(props, wanted, f"VM {name!r}")
    pci_plan = None
    if pcidevs is not None:
        # Checked before any property is written: a bad device list changes nothing.
        pci_plan = _pci_plan(app, name, as_list(pcidevs, "pcidevs"),
                             parse_bool(strict, "pci_strictreset"))
    _write_properties(app, "admin.vm.property.", name, props, plan, outcome, test)
    if pci_plan is not None:
        outcome.extend(_apply_pci(app, name, pci_plan, test))
    return outcome


def read_global_prefs(app: Qubes, keys: Iterable[str] = ()) -> dict[str, Any]:
    """Values of the named global properties (``qubes-prefs``; all when none are named)."""
    props = parse_get_all(app, app.call("admin.property.GetAll"))
    wanted = [property_name(key) for key in keys] or sorted(props)
    unknown = [key for key in wanted if key not in props]
    if unknown:
        raise UsageError(f"the system has no property {unknown[0]!r}")
    return {key: props[key].value for key in wanted}


def set_global_prefs(app: Qubes, wanted: Mapping[str, Any], test: bool = False) -> Outcome:
    """Give the system's global properties (``default_netvm``, ...) these values."""
    props = parse_get_all(app, app.call("admin.property.GetAll"))
    wanted = {property_name(key): value for key, value in wanted.items()}
    outcome, plan = _plan_properties(props, wanted, "the system")
    _write_properties(app, "admin.property.", "dom0", props, plan, outcome, test)
    return outcome


def _plan_properties(props: dict[str, Property], wanted: Mapping[str, Any], holder: str
                     ) -> tuple[Outcome, list[tuple[str, Any]]]:
    """What differs: ``[(name, new value or DEFAULT)]``; a bad name or value raises."""
    outcome = Outcome()
    plan: list[tuple[str, Any]] = []
    for key, value in wanted.items():
        if key not in props:
            raise UsageError(f"{holder} has no property {key!r}")
        current = props[key]
        if value == DEFAULT:
            if current.is_default:
                outcome.note(f"[SKIP] {key}: already {DEFAULT}")
            else:
                plan.append((key, DEFAULT))
            continue
        new = coerce(current.kind, value, f"{holder}: property {key}")
        if same(current, new):
            outcome.note(f"[SKIP] {key}: already {current.value!r}")
            continue
        plan.append((key, new))
    return outcome, plan


def _write_properties(app: Qubes, prefix: str, dest: str, props: dict[str, Property],
                      plan: list[tuple[str, Any]], outcome: Outcome, test: bool) -> None:
    for key, new in plan:
        if not test:
            if new == DEFAULT:
                app.call(prefix + "Reset", dest, key)
            else:
                app.call(prefix + "Set", dest, key, wire(new))
        outcome.change(key, props[key].shown, new)
        outcome.note(f"{key}: {props[key].shown!r} -> {new!r}")
    if plan and not test:
        app.invalidate()


# --- PCI devices -------------------------------------------------------------------


def pci_ident(device: str) -> tuple[str, str]:
    """``00:1f.2``, ``00_1f.2``, ``dom0:00_1f.2`` or ``pci:dom0:00_1f.2`` -> (backend, ident)."""
    match = PCI_RE.match(str(device).strip())
    if not match:
        raise UsageError(f"not a PCI device: {device!r} (expected BB:DD.F, like 00:1f.2)")
    ident = f"{match['bus']}_{match['dev']}.{match['fn']}".lower()
    return match["backend"] or "dom0", ident


def pci_assigned(app: Qubes, name: str) -> dict[str, dict[str, str]]:
    """``{"00:1f.2": options}`` of the VM's PCI assignments from dom0."""
    found = {}
    for key, options in get(app, name).devices["pci"].assigned().items():
        backend, _, ident = key.partition("+")
        shown = ident.replace("_", ":") if backend == "dom0" else f"{backend}:{ident}"
        found[shown] = options
    return found


def _pci_plan(app: Qubes, name: str, devices: list[str], strict: bool
              ) -> list[tuple[str, str, dict[str, str], bool]]:
    """(backend, ident, options, reassign) for each device not yet assigned as wanted."""
    current = {}
    for key, options in get(app, name).devices["pci"].assigned().items():
        current[key] = options
    plan = []
    for device in devices:
        backend, ident = pci_ident(device)
        options = {} if strict else {"no-strict-reset": "True"}
        have = current.get(f"{backend}+{ident}")
        if have is not None and ("no-strict-reset" in have) == (not strict):
            continue
        plan.append((backend, ident, options, have is not None))
    return plan


def _apply_pci(app: Qubes, name: str, plan: list[tuple[str, str, dict[str, str], bool]],
               test: bool) -> Outcome:
    outcome = Outcome()
    if not plan:
        return outcome
    old = sorted(pci_assigned(app, name))
    pci = get(app, name).devices["pci"]
    new = set(old)
    for backend, ident, options, reassign in plan:
        if not test:
            if reassign:
                pci.unassign(backend, ident)
            pci.assign(backend, ident, **options)
        shown = ident.replace("_", ":") if backend == "dom0" else f"{backend}:{ident}"
        new.add(shown)
        outcome.note(f"pci {shown}: assigned" + (" (no strict reset)" if options else ""))
    outcome.change("pcidevs", old, sorted(new))
    return outcome


def set_devices(app: Qubes, name: str, attach: Iterable[str] = (), detach: Iterable[str] = (),
                options: Mapping[str, Any] | None = None, test: bool = False) -> Outcome:
    """Assign (``attach``) and unassign (``detach``) host PCI devices of the VM."""
    outcome = Outcome()
    pci = get(app, name).devices["pci"]
    current = pci.assigned()
    text_options = {str(k): str(v) for k, v in (options or {}).items()}
    to_attach = []
    for device in attach:
        backend, ident = pci_ident(device)
        have = current.get(f"{backend}+{ident}")
        if have is not None and have == text_options:
            outcome.note(f"[SKIP] pci {backend}:{ident}: already assigned")
            continue
        to_attach.append((backend, ident, have is not None))
    to_detach = []
    for device in detach:
        backend, ident = pci_ident(device)
        if f"{backend}+{ident}" not in current:
            outcome.note(f"[SKIP] pci {backend}:{ident}: not assigned")
            continue
        to_detach.append((backend, ident))
    old = sorted(current)
    new = set(old)
    for backend, ident, reassign in to_attach:
        if not test:
            if reassign:
                pci.unassign(backend, ident)
            pci.assign(backend, ident, **text_options)
        new.add(f"{backend}+{ident}")
        outcome.note(f"pci {backend}:{ident}: assigned")
    for backend, ident in to_detach:
        if not test:
            pci.unassign(backend, ident)
        new.discard(f"{backend}+{ident}")
        outcome.note(f"pci {backend}:{ident}: unassigned")
    if to_attach or to_detach:
        outcome.change("pci", old, sorted(new))
    return outcome


# --- features, services, tags ------------------------------------------------------


def read_features(app: Qubes, name: str, prefix: str = "") -> dict[str, str]:
    """The VM's features (those starting with ``prefix``, which is stripped)."""
    vm = get(app, name)
    return {key[len(prefix):]: value for key, value in vm.features.items()
            if key.startswith(prefix)}


def set_features(app: Qubes, name: str, *, enable: Iterable[str] = (),
                 disable: Iterable[str] = (), default: Iterable[str] = (),
                 values: Mapping[str, Any] | None = None, prefix: str = "",
                 test: bool = False) -> Outcome:
    """Features on (``"1"``), off (``""``), removed (``default``) or set to a value.

    With ``prefix="service."`` the names are services (``qvm.service``).
    """
    wanted: dict[str, str | None] = {}
    for key in default:
        wanted[str(key)] = None
    for key in disable:
        wanted[str(key)] = ""
    for key in enable:
        wanted[str(key)] = "1"
    for key, value in (values or {}).items():
        wanted[str(key)] = None if value == DEFAULT else feature_value(value)
    for key in wanted:
        if not key or any(c.isspace() for c in key):
            raise UsageError(f"invalid feature name {key!r}")
    current = read_features(app, name, prefix) if wanted else {}
    vm = get(app, name)
    outcome = Outcome()
    for key, value in wanted.items():
        old = current.get(key)
        if old == value:
            outcome.note(f"[SKIP] {prefix}{key}: already {_shown_feature(old)}")
            continue
        if not test:
            if value is None:
                del vm.features[prefix + key]
            else:
                vm.features[prefix + key] = value
        outcome.change(key, old, value)
        outcome.note(f"{prefix}{key}: {_shown_feature(old)} -> {_shown_feature(value)}")
    return outcome


def _shown_feature(value: str | None) -> str:
    if value is None:
        return "unset"
    return repr(value)


def set_tags(app: Qubes, name: str, add: Iterable[str] = (), delete: Iterable[str] = (),
             test: bool = False) -> Outcome:
    """Add and remove tags; one change ``tags: {old: [...], new: [...]}`` if any differs."""
    vm = get(app, name)
    current = set(vm.tags)
    add_list, delete_list = list(add), list(delete)
    for tag in add_list + delete_list:
        if not tag or any(c.isspace() for c in str(tag)):
            raise UsageError(f"invalid tag {tag!r}")
    new = (current | set(add_list)) - (set(delete_list) - set(add_list))
    outcome = Outcome()
    if new == current:
        outcome.note("[SKIP] All requested tags already set: " + ",".join(sorted(current)))
        return outcome
    if not test:
        for tag in sorted(new - current):
            vm.tags.add(tag)
        for tag in sorted(current - new):
            vm.tags.remove(tag)
    outcome.change("tags", sorted(current), sorted(new))
    outcome.note(f"tags: {','.join(sorted(current))} -> {','.join(sorted(new))}")
    return outcome


# --- existence ---------------------------------------------------------------------


def create(app: Qubes, name: str, *, vmclass: str = "AppVM", label: str | None = None,
           template: str | None = None, pool: str | None = None,
           prefs: Mapping[str, Any] | None = None, test: bool = False) -> Outcome:
    """Create the VM and give it ``prefs``; if a later step fails, the VM is removed again."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"a VM name is needed, got {name!r}")
    if exists(app, name):
        raise UsageError(f"a VM named {name!r} already exists")
    if vmclass not in VM_CLASSES:
        raise UsageError(f"unknown VM class {vmclass!r} (one of {', '.join(VM_CLASSES)})")
    if not label:
        raise UsageError(f"creating {name!r} needs a label (one of "
                         f"{', '.join(app.labels)})")
    if label not in app.labels:
        raise UsageError(f"no such label {label!r} (one of {', '.join(app.labels)})")
    if template is not None and not exists(app, template):
        raise UsageError(f"no such template {template!r} for {name!r}")
    outcome = Outcome()
    outcome.change("class", None, vmclass)
    outcome.change("label", None, str(label))
    if template:
        outcome.change("template", None, str(template))
    if test:
        outcome.note(f"{vmclass} {name!r} would be created")
        for key, value in (prefs or {}).items():
            outcome.change(property_name(key), None, value)
        return outcome
    app.add_new_vm(vmclass, name, str(label), template, pool=pool)
    outcome.note(f"{vmclass} {name!r} created")
    try:
        outcome.extend(set_prefs(app, name, prefs or {}))
    except BaseException:
        app.remove_vm(name)
        raise
    return outcome


def present(app: Qubes, name: str, *, vmclass: str | None = None, label: str | None = None,
            template: str | None = None, pool: str | None = None,
            prefs: Mapping[str, Any] | None = None, test: bool = False) -> Outcome:
    """Create the VM if missing; an existing one gets the given label, template and prefs."""
    if not exists(app, name):
        return create(app, name, vmclass=vmclass or "AppVM", label=label, template=template,
                      pool=pool, prefs=prefs, test=test)
    vm = get(app, name)
    if vmclass and vm.klass != vmclass:
        raise UsageError(f"VM {name!r} exists as {vm.klass}, not {vmclass}; remove it "
                         "first to change its class")
    wanted = dict(prefs or {})
    if label:
        wanted["label"] = label
    if template:
        wanted["template"] = template
    outcome = set_prefs(app, name, wanted, test=test)
    outcome.comments.insert(0, f"[SKIP] A VM with the name '{name}' already exists.")
    return outcome


def absent(app: Qubes, name: str, test: bool = False) -> Outcome:
    """Remove the VM (killed first if it runs); nothing to do when it is missing."""
    outcome = Outcome()
    if not exists(app, name):
        outcome.note(f"[SKIP] The VM '{name}' does not exist.")
        return outcome
    if not test:
        if power_state(app, name) != "halted":
            get(app, name).kill()
        app.remove_vm(name)
    outcome.change(name, "present", None)
    outcome.note(f"VM {name!r} removed")
    return outcome


# Debian templates by their Qubes names, for a template named without ``suite``.
TEMPLATE_SUITES = {"debian-12": "bookworm", "debian-13": "trixie"}


def install_template(app: Qubes, name: str, *, suite: str | None = None,
                     with_salt: bool = False, cache_dir: str | None = None,
                     label: str = "black", base_dir: str | None = None,
                     test: bool = False) -> Outcome:
    """The TemplateVM ``name``, built with ``qubes-template-build`` when missing.

    ``suite`` defaults from the name (``debian-12`` is bookworm); a build that fails
    leaves no VM (the builder removes what it created).
    """
    from qubes_core import template_build

    outcome = Outcome()
    if exists(app, name):
        klass = get(app, name).klass
        if klass != "TemplateVM":
            raise UsageError(f"{name!r} exists as {klass}, not as a TemplateVM")
        outcome.note(f"[SKIP] template {name} is installed")
        return outcome
    suite = suite or TEMPLATE_SUITES.get(name) or next(
        (known for known in template_build.SUITES if known in name), None)
    if suite not in template_build.SUITES:
        raise UsageError(f"no Debian suite for template {name!r}: give suite= (one of "
                         f"{', '.join(template_build.SUITES)})")
    if label not in app.labels:
        raise UsageError(f"no such label {label!r} (one of {', '.join(app.labels)})")
    with_salt = parse_bool(with_salt, "with_salt")
    outcome.change("class", None, "TemplateVM")
    outcome.change("suite", None, suite)
    if test:
        outcome.note(f"template {name} would be built ({suite}"
                     f"{', with Salt' if with_salt else ''})")
        return outcome
    try:
        template_build.build(name, suite, base_dir=base_dir, with_salt=with_salt,
                             cache_dir=Path(cache_dir) if cache_dir else None, label=label,
                             progress=template_build.Progress(quiet=True))
    except template_build.BuildError as error:
        raise exc.QubesException(f"building template {name}: {error}") from None
    finally:
        app.invalidate()  # the builder wrote through its own connection
    outcome.note(f"template {name} built ({suite}{', with Salt' if with_salt else ''})")
    return outcome


def clone(app: Qubes, source: str, name: str, *, label: str | None = None,
          pool: str | None = None, test: bool = False) -> Outcome:
    """A copy of ``source`` named ``name``: properties, features, tags, firewall, volumes."""
    outcome = Outcome()
    if exists(app, name):
        outcome.note(f"[SKIP] A VM with the name '{name}' already exists.")
        return outcome
    src = get(app, source)
    props = properties(app, source)
    template = props["template"].value if "template" in props else None
    copied = {key: prop.value for key, prop in props.items()
              if not prop.is_default and key not in NOT_CLONED}
    outcome.change(name, None, f"clone of {source}")
    if test:
        outcome.note(f"{src.klass} {name!r} would be cloned from {source!r}")
        return outcome
    outcome.extend(create(app, name, vmclass=src.klass, label=label or props["label"].value,
                          template=template, pool=pool))
    try:
        set_prefs(app, name, copied)
        vm = get(app, name)
        for key, value in src.features.items():
            vm.features[key] = value
        for tag in src.tags:
            vm.tags.add(tag)
        rules = app.call("admin.vm.firewall.Get", source)
        app.call("admin.vm.firewall.Set", name, payload=rules)
        for volume in app.call("admin.vm.volume.List", source).split():
            info = storage.volume_info(app, source, volume)
            if info.get("save_on_stop") != "True":
                continue
            token = app.call("admin.vm.volume.CloneFrom", source, volume)
            app.call("admin.vm.volume.CloneTo", name, volume, token)
    except BaseException:
        app.remove_vm(name)
        raise
    outcome.note(f"cloned {source!r} as {name!r}")
    return outcome


# --- power -------------------------------------------------------------------------


def _power_step(app: Qubes, name: str, test: bool, skip: Callable[[str], str | None],
                act: Callable[[ClientVM, str], None], new_state: str, done: str) -> Outcome:
    """Read the power state; unless ``skip(state)`` says why not, ``act`` and report."""
    outcome = Outcome()
    state = power_state(app, name)
    reason = skip(state)
    if reason:
        outcome.note(f"[SKIP] {name} {reason}")
        return outcome
    if not test:
        act(get(app, name), state)
    outcome.change("power_state", state, new_state)
    outcome.note(f"{name} {done}")
    return outcome


def start(app: Qubes, name: str, test: bool = False) -> Outcome:
    """Start the VM (unpause it if paused); nothing to do when it runs."""
    def act(vm: ClientVM, state: str) -> None:
        if state == "paused":
            vm.unpause()
        else:
            vm.start()

    return _power_step(app, name, test,
                       lambda state: "is already running" if state == "running" else None,
                       act, "running", "started")


def shutdown(app: Qubes, name: str, *, force: bool = False, wait: bool = True,
             kill: bool = False, test: bool = False) -> Outcome:
    """Shut the VM down (or kill it); nothing to do when it is halted."""
    def act(vm: ClientVM, state: str) -> None:
        if kill:
            vm.kill()
            return
        if state == "paused":
            vm.unpause()
        vm.shutdown(force=force, wait=wait)

    return _power_step(app, name, test,
                       lambda state: "is already halted" if state == "halted" else None,
                       act, "halted", "killed" if kill else "shut down")


def pause(app: Qubes, name: str, test: bool = False) -> Outcome:
    """Pause a running VM; nothing to do when it is paused."""
    def skip(state: str) -> str | None:
        if state == "paused":
            return "is already paused"
        if state != "running":
            raise exc.QubesVMNotRunningError(name, f"{name} is {state}: only a running VM "
                                                   "can be paused")
        return None

    return _power_step(app, name, test, skip, lambda vm, _: vm.pause(), "paused", "paused")


def unpause(app: Qubes, name: str, test: bool = False) -> Outcome:
    """Resume a paused VM; nothing to do when it is not paused."""
    return _power_step(app, name, test,
                       lambda state: None if state == "paused" else f"is not paused ({state})",
                       lambda vm, _: vm.unpause(), "running", "unpaused")


def create_disposable(app: Qubes, base: str | None = None, test: bool = False) -> Outcome:
    """A new DispVM from ``base`` (else the global ``default_dispvm``), halted."""
    outcome = Outcome()
    if base is not None:
        get(app, base)
    if test:
        outcome.change("dispvm", None, f"a new DispVM of {base or 'default_dispvm'}")
        return outcome
    vm = app.create_disposable(base)
    outcome.change("dispvm", None, vm.name)
    outcome.note(f"DispVM {vm.name} created from {base or 'default_dispvm'}")
    return outcome
