"""What is decided at run time, not by the config: the weight on new, the extra cohorts and
the share of original's requests mirrored to new.

The controller (or an operator, when no rollout runs) writes it; the router
reads it once per request. It is separate from the config-derived snapshot, so
a reload never resets it and a weight change never rebuilds anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LiveState:
    """The weight on new (basis points) and the cohorts added at run time."""

    __slots__ = ("allow_groups", "allow_users", "deny_users", "mirror_bp", "new_weight_bp",
                 "on_change")

    def __init__(self, new_weight_bp: int = 0) -> None:
        self.new_weight_bp = 0
        self.mirror_bp = 0  # share of original's requests copied to new (mirroring)
        self.allow_users: frozenset[str] = frozenset()  # a phase's testers or rings
        self.allow_groups: frozenset[str] = frozenset()
        self.deny_users: frozenset[str] = frozenset()  # a targeted rollback
        self.on_change: Callable[[], None] | None = None  # a supervisor tells its workers
        self.set_weight(new_weight_bp)

    def set_weight(self, new_weight_bp: int) -> None:
        """The share of users on new, 0..10000 basis points; the next request sees it."""
        if not 0 <= new_weight_bp <= 10000:
            raise ValueError(f"weight must be 0..10000 basis points, got {new_weight_bp}")
        changed = new_weight_bp != self.new_weight_bp
        self.new_weight_bp = new_weight_bp
        if changed and self.on_change is not None:
            self.on_change()

    def set_mirror(self, mirror_bp: int) -> None:
        """The share of original's requests copied to new, 0..10000 basis points."""
        if not 0 <= mirror_bp <= 10000:
            raise ValueError(f"mirror must be 0..10000 basis points, got {mirror_bp}")
        changed = mirror_bp != self.mirror_bp
        self.mirror_bp = mirror_bp
        if changed and self.on_change is not None:
            self.on_change()

    def set_cohorts(self, allow_users: frozenset[str] = frozenset(),
                    allow_groups: frozenset[str] = frozenset(),
                    deny_users: frozenset[str] = frozenset()) -> None:
        """Cohorts on top of the config's, from the next request."""
        changed = (allow_users, allow_groups, deny_users) != (
            self.allow_users, self.allow_groups, self.deny_users)
        self.allow_users = allow_users
        self.allow_groups = allow_groups
        self.deny_users = deny_users
        if changed and self.on_change is not None:
            self.on_change()

    def to_wire(self) -> dict[str, Any]:
        """Plain JSON-able data (what a supervisor sends its workers)."""
        return {"weight_bp": self.new_weight_bp, "allow_users": sorted(self.allow_users),
                "allow_groups": sorted(self.allow_groups),
                "deny_users": sorted(self.deny_users), "mirror_bp": self.mirror_bp}

    def take(self, d: dict[str, Any]) -> None:
        """Apply ``to_wire`` data; KeyError, TypeError or ValueError on bad data."""
        self.set_cohorts(frozenset(map(str, d["allow_users"])),
                         frozenset(map(str, d["allow_groups"])),
                         frozenset(map(str, d["deny_users"])))
        self.set_weight(int(d["weight_bp"]))
        self.set_mirror(int(d.get("mirror_bp", 0)))
