"""Rollout state and its events: what is saved, and how it reads back (stores: ``store``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

FORMAT = 1
# A stop record's fields and their types; one missing or mistyped is no record at all.
STOP_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,), "phase": (int,), "phase_name": (str,), "weight": (int, float),
    "time": (int, float), "elapsed_s": (int, float), "reason": (str,), "actor": (str,)}


def valid_stop(record: Any) -> dict[str, Any]:
    """``record`` if it is a whole stop record, else ``{}`` (the controller derives one
    from the events): a cosmetic field never makes a state unreadable."""
    if not isinstance(record, dict) or not all(
            isinstance(record.get(k), t) and not isinstance(record.get(k), bool)
            for k, t in STOP_FIELDS.items()):
        return {}
    return dict(record)


class Status(StrEnum):
    """Where a rollout stands."""

    PROGRESSING = "progressing"
    PAUSED = "paused"
    ROLLING_BACK = "rolling-back"  # gradual rollback under way
    ROLLED_BACK = "rolled-back"
    COMPLETE = "complete"
    ABORTED = "aborted"
    NEEDS_ATTENTION = "needs-attention"  # a person must look (breach at full, bad state file)


@dataclass(frozen=True, slots=True)
class Event:
    """A transition: when, from what to what, why, who, and the numbers behind it."""

    time: float  # unix seconds
    kind: str  # advance, rollback, complete, breach, pause, resume, ...
    from_: str
    to: str
    reason: str
    actor: str  # "controller" or the operator
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("from_")
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Event:
        return Event(float(d["time"]), str(d["kind"]), str(d["from"]), str(d["to"]),
                     str(d["reason"]), str(d["actor"]), dict(d.get("evidence") or {}))


@dataclass(slots=True)
class RolloutState:
    """Everything needed to resume a rollout after a restart."""

    rollout: str
    status: Status = Status.PROGRESSING
    phase: int = 0
    weight_bp: int = 0
    phase_started: float = 0.0  # unix seconds
    approved: bool = False  # approval given for leaving the current phase
    deny_users: list[str] = field(default_factory=list)  # targeted rollback
    rollback_weights: list[int] = field(default_factory=list)  # gradual: weights still to go
    rollback_next: float = 0.0
    rollback_interval: float = 0.0
    paused_status: str = ""  # what resume returns to
    # What a rollback or abort stopped: kind, phase, phase_name, weight (percent), time,
    # elapsed_s (in that phase), reason, actor. Empty while the plan runs; retry clears it.
    stopped: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # Copies of the lists: the document is encoded in a worker thread while the loop
        # goes on changing the state.
        d: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            if k != "events":
                v = getattr(self, k)
                d[k] = list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
        d["status"] = str(self.status)
        d["events"] = [e.to_dict() for e in self.events]
        return {"format": FORMAT, **d}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RolloutState:
        """Raises KeyError, TypeError or ValueError on anything malformed."""
        if d.get("format") != FORMAT:
            raise ValueError(f"state format {d.get('format')!r}, this veer reads {FORMAT}")
        state = RolloutState(
            rollout=str(d["rollout"]), status=Status(d["status"]), phase=int(d["phase"]),
            weight_bp=int(d["weight_bp"]), phase_started=float(d["phase_started"]),
            approved=bool(d["approved"]), deny_users=[str(u) for u in d["deny_users"]],
            rollback_weights=[int(w) for w in d["rollback_weights"]],
            rollback_next=float(d["rollback_next"]),
            rollback_interval=float(d["rollback_interval"]),
            paused_status=str(d["paused_status"]),
            stopped=valid_stop(d.get("stopped")),  # absent in files written before retry
            events=[Event.from_dict(e) for e in d["events"]],
        )
        if not 0 <= state.weight_bp <= 10000 or state.phase < 0:
            raise ValueError("weight or phase out of range")
        return state


class StateError(Exception):
    """The state file cannot be used; ``kept`` is where the bad file was moved."""

    def __init__(self, message: str, kept: str | None = None) -> None:
        super().__init__(message + (f" (kept aside as {kept})" if kept else ""))
        self.kept = kept
