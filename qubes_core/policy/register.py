"""``policy.RegisterArgument``: a backend VM registers an argument of a service.

The backend calls it with the frontend VM as target, the real service as the
service argument and the argument to register as payload. dom0 then adds the
rule "frontend may call SERVICE+ARGUMENT in the backend" as a per-argument
file of the older format (read through ``!compat-4.0``), created exclusively:
an existing rule for that argument is never replaced.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from qubes_core import exc
from qubes_core.policy.rules import SERVICE_RE

log = logging.getLogger("qubes.policy.register")

ARGUMENT_RE = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


def register_argument(legacy_dir: Path, backend: str, frontend: str, service: str,
                      untrusted_argument: bytes) -> Path:
    """Create the rule file; return its path. Refuses bad input and existing rules."""
    if not SERVICE_RE.fullmatch(service) or "+" in service:
        raise exc.QubesValueError(f"policy.RegisterArgument: invalid service name {service!r}")
    if not ARGUMENT_RE.fullmatch(untrusted_argument):
        raise exc.QubesValueError(
            "policy.RegisterArgument: the argument must be 1 to 64 bytes of "
            "letters, digits, '.', '_' and '-'")
    argument = untrusted_argument.decode("ascii")
    legacy_dir = Path(legacy_dir)
    legacy_dir.mkdir(parents=True, exist_ok=True)
    path = legacy_dir / f"{service}+{argument}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise exc.QubesException(
            f"a policy for {service}+{argument} already exists ({path}); not changed"
        ) from None
    with os.fdopen(fd, "w", encoding="ascii") as stream:
        stream.write(f"## Registered by {backend} through policy.RegisterArgument\n"
                     f"{frontend} {backend} allow\n")
    log.info("policy.RegisterArgument: %s may call %s+%s in %s (%s)", frontend, service,
             argument, backend, path)
    return path
