"""Outcomes that happen later, elsewhere (``POST /experiments/{name}/events``), attributed
to the variant that served the user.

A user's variant is the one veer saw serve them (the merged units say so); a
user veer has not seen yet is placed where the router would place them now:
the allow- and deny-lists (configured and live), then the sticky bucket at the
current weight. An experiment's split is fixed, so that is where they were and
will be served. Groups are not known from an event (they come from request
headers), so group lists cannot be applied to a user veer has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.routing.live import LiveState
from proxy.routing.router import Router
from proxy.routing.variant import Variant
from proxy.telemetry.outcomes import MAX_VALUE, Outcomes, user_id

MAX_EVENTS = 10_000  # per request
MAX_USER = 256  # characters of a user id


@dataclass(frozen=True, slots=True)
class Ingested:
    """What a batch of events did."""

    accepted: int
    rejected: int
    errors: list[str]  # the first few reasons, for the caller

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "errors": self.errors}


def attribute(user: str, seen: Outcomes, router: Router, live: LiveState) -> Variant:
    """The variant that served (or will serve) ``user``."""
    got = seen.seen(user_id(user))
    return got if got is not None else router.variant_of(user, live)


def ingest(events: list[Any], metrics: frozenset[str], seen: Outcomes, into: Outcomes,
           router: Router, live: LiveState) -> Ingested:
    """Record each well-formed event of a configured events metric into ``into``."""
    accepted = rejected = 0
    errors: list[str] = []

    def reject(i: int, why: str) -> None:
        nonlocal rejected
        rejected += 1
        if len(errors) < 10:
            errors.append(f"events[{i}]: {why}")

    for i, e in enumerate(events):
        if not isinstance(e, dict) or set(e) - {"user", "metric", "value"}:
            reject(i, "an object with user, metric and value (and nothing else)")
            continue
        user, metric, value = e.get("user"), e.get("metric"), e.get("value")
        if not isinstance(user, str | int) or isinstance(user, bool) or not str(user) \
                or len(str(user)) > MAX_USER:
            reject(i, f"user must be a non-empty string of at most {MAX_USER} characters")
            continue
        if not isinstance(metric, str) or metric not in metrics:
            reject(i, f"metric must be one of {sorted(metrics)} (source: events)")
            continue
        if isinstance(value, bool):
            value = 1.0 if value else 0.0
        # the same bound as veer-metric values (a huge int would overflow a float)
        if not isinstance(value, int | float) or not -MAX_VALUE <= value <= MAX_VALUE:
            reject(i, f"value must be a number within +-{MAX_VALUE:g}")
            continue
        variant = attribute(str(user), seen, router, live)
        into.table(str(metric), variant).add(user_id(str(user)), float(value))
        accepted += 1
    return Ingested(accepted, rejected, errors)
