"""The lease the controller asks before acting: one process decides at a time.

With several processes sharing a rollout, only the holder of the lease ticks
the controller and takes actions; the others apply what it saves. A single
process always holds it (``SoleLease``).
"""

from __future__ import annotations

from typing import Protocol


class Lease(Protocol):
    """Whether this process may decide now."""

    def held(self, now: float) -> bool:
        """True while this process holds the lease (``now``: unix seconds)."""
        ...


class SoleLease:
    """The lease of a process that runs alone: always held."""

    def held(self, now: float) -> bool:
        return True
