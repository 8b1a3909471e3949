"""The functional tests' fixtures (real backends, veer on ephemeral ports), shared here."""

from __future__ import annotations

from tests.functional.conftest import backends, start_veer

__all__ = ["backends", "start_veer"]
