"""Rollout state, its events, and the durable store (one JSON file, written atomically).

Every change is written whole: to a temporary file in the same directory,
fsync'd, renamed over the old one, and the directory fsync'd, so a crash
leaves either the old state or the new one, never half of either. A file that
cannot be read is moved aside (never overwritten) and reported. One writer
only: the store holds an exclusive lock for as long as the process runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

FORMAT = 1


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
    events: list[Event] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "events"}
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


class StateStore(Protocol):
    """Where rollout state lives (a file now; a shared store with a version later)."""

    def load(self) -> RolloutState | None: ...
    def save(self, state: RolloutState) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """State kept in memory only (no ``state.path`` configured)."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] | None = None

    def load(self) -> RolloutState | None:
        return None if self.saved is None else RolloutState.from_dict(self.saved)

    def save(self, state: RolloutState) -> None:
        self.saved = json.loads(json.dumps(state.to_dict()))  # a copy, as a file would be

    def close(self) -> None:
        pass


class FileStore:
    """One JSON file, atomically replaced on every save, locked for one writer."""

    def __init__(self, path: str | Path, max_events: int = 500) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the single-writer lock, or raise StateError naming the problem."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(f"{self.path} is in use by another veer process") from None
        self._lock_fd = fd

    def load(self) -> RolloutState | None:
        """The saved state, None if there is none; a bad file is moved aside first."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return RolloutState.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            kept = self._keep_aside()
            raise StateError(f"cannot read state file {self.path}: {exc}", kept) from None

    def _keep_aside(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for n in range(1000):
            target = Path(f"{self.path}.corrupt-{stamp}" + (f"-{n}" if n else ""))
            if not target.exists():
                os.rename(self.path, target)
                return str(target)
        raise StateError(f"too many kept-aside copies of {self.path}")

    def save(self, state: RolloutState) -> None:
        """Write the whole state atomically (events bounded to ``max_events``)."""
        if len(state.events) > self.max_events:
            del state.events[: len(state.events) - self.max_events]
        data = json.dumps(state.to_dict(), indent=1, default=str).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
