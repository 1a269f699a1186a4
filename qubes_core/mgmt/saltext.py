"""What the Salt loader modules share: errors and argument conventions.

Qubes' own ``qvm`` module takes options as ``key=value``, switches as
``flags=[...]``, names with dashes or underscores, and lists either as YAML
lists or as positional words; these helpers read all of those forms so that
existing formulas and command lines work unchanged. Every library error leaves
here as one of Salt's two exceptions, with one line of text: the caller's
mistakes as ``SaltInvocationError``, failures as ``CommandExecutionError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from salt.exceptions import CommandExecutionError, SaltInvocationError

from qubes_core import exc
from qubes_core.mgmt.errors import CALLER_ERRORS, UsageError, one_line


@contextlib.contextmanager
def salt_errors(what: str = "") -> Iterator[None]:
    """Turn library and qubesd errors into Salt's, prefixed with ``what`` if given."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except CALLER_ERRORS as error:
        raise SaltInvocationError(prefix + one_line(error)) from None
    except (exc.QubesException, OSError, ConnectionError) as error:
        raise CommandExecutionError(prefix + one_line(error)) from None


def clean(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's keyword arguments without Salt's own (``__pub_*``, ``__env__``)."""
    return {key: value for key, value in kwargs.items() if not str(key).startswith("__")}


def pop_test(kwargs: dict[str, Any], opts: Mapping[str, Any]) -> bool:
    """Whether this call is a dry run (``test=True`` given or set for the run)."""
    given = kwargs.pop("test", None)
    if given is not None:
        from qubes_core.mgmt.values import parse_bool

        return parse_bool(given, "test")
    return bool(opts.get("test", False))


def pop_flags(kwargs: dict[str, Any]) -> set[str]:
    """``flags=[proxy, net]`` (or a comma-separated string) as a set of dash-names."""
    from qubes_core.mgmt.values import as_list

    return {flag.replace("_", "-") for flag in as_list(kwargs.pop("flags", None), "flags")}


def merged_mappings(value: Any, what: str) -> dict[str, Any]:
    """A mapping, or a list of mappings (YAML's ``- key: value`` lines), as one dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        merged: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, Mapping):
                raise UsageError(f"{what}: expected key: value items, got {item!r}")
            merged.update(item)
        return merged
    raise UsageError(f"{what}: expected a mapping, got {value!r}")


CREATE_OPTIONS = ("label", "template", "class", "pool", "mem", "vcpus", "prefs", "flags")


def creation_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Qubes' create options and flags as arguments of :func:`qubes_core.mgmt.vms.create`.

    ``mem``/``vcpus`` become properties; flags ``proxy``/``net`` provide network
    (``net`` without a netvm), ``hvm`` sets ``virt_mode``, ``hvm-template`` and
    ``standalone`` pick the class.
    """
    from qubes_core.mgmt.errors import UsageError

    kwargs = dict(kwargs)
    flags = pop_flags(kwargs)
    prefs = merged_mappings(kwargs.pop("prefs", None), "prefs")
    vmclass = kwargs.pop("class", None)
    if "hvm-template" in flags:
        vmclass = "TemplateVM"
    elif "standalone" in flags:
        vmclass = "StandaloneVM"
    for option, prop in (("mem", "memory"), ("vcpus", "vcpus")):
        if option in kwargs:
            prefs[prop] = kwargs.pop(option)
    if "hvm" in flags:
        prefs["virt_mode"] = "hvm"
    if "proxy" in flags or "net" in flags:
        prefs["provides_network"] = True
    if "net" in flags:
        prefs["netvm"] = None
    unknown = sorted(set(kwargs) - {"label", "template", "pool"})
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)} (known: "
                         f"{', '.join(CREATE_OPTIONS)})")
    return {"vmclass": vmclass, "label": kwargs.get("label"),
            "template": kwargs.get("template"), "pool": kwargs.get("pool"), "prefs": prefs}


TEMPLATE_OPTIONS = ("suite", "with_salt", "cache_dir", "label")


def template_options(kwargs: Mapping[str, Any], opts: Mapping[str, Any]) -> dict[str, Any]:
    """``template_install``'s options as :func:`qubes_core.mgmt.vms.install_template`
    takes them, with the base directory the minion's options name."""
    from qubes_core.mgmt.connection import base_dir_from_opts

    options = {str(key).replace("-", "_"): value for key, value in kwargs.items()}
    unknown = sorted(set(options) - set(TEMPLATE_OPTIONS))
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)} (known: "
                         f"{', '.join(TEMPLATE_OPTIONS)})")
    return {**options, "base_dir": base_dir_from_opts(opts)}
