"""The two kinds of failure a management call reports.

A :class:`UsageError` is the caller's fault (unknown VM, property, action or a
bad value): the Salt adapters turn it into ``SaltInvocationError``. Anything
else from qubesd is a :class:`qubes_core.exc.QubesException`; the adapters turn
those into ``CommandExecutionError``. Both carry one line that says what was
wrong; nothing was changed when either is raised before a write.
"""

from __future__ import annotations

from qubes_core import exc


class UsageError(exc.QubesException, ValueError):
    """A management call was given something it cannot act on."""


# Errors qubesd raises that mean "the caller named something wrong", not "it failed".
CALLER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    exc.QubesVMNotFoundError,
    exc.QubesNoSuchPropertyError,
    exc.QubesValueError,
    exc.QubesLabelNotFoundError,
    exc.QubesFeatureNotFoundError,
    exc.QubesTagNotFoundError,
)


def one_line(error: BaseException) -> str:
    """The error's message on one line (qubesd messages may hold a newline)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text
