"""The functional tests' fixtures (real backends, veer on ephemeral ports), shared here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.functional.conftest import backends, start_veer
from tests.reliability.processes import Backends, run_backends

__all__ = ["backends", "start_veer"]


@pytest.fixture(scope="module")
def backend_ports() -> Iterator[Backends]:
    """The two demo backends, each in a process of its own, for the whole module."""
    yield from run_backends()
