"""System binaries some tests need: skip with a reason where missing, fail under CI=true."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str, install_hint: str) -> str:
    """The path of ``name``; skips the test when it is missing (fails in CI, which installs it)."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} not found; install it with: {install_hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (.ci/run should have installed it)")
    pytest.skip(reason)
