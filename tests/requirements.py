"""Requirements of tests (root, tools, loop devices).

Outside CI a test whose requirement is missing is skipped with the reason; under
``CI=true`` it fails, so that a broken install is seen rather than hidden.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (outside CI) or fail (under CI=true) unless ``condition`` holds."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"requirement missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"needs the {name} command")
