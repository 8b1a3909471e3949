"""The state a process starts from: the configured store, what it holds, or a safe start.

A state that cannot be read, or that belongs to another rollout or plan, is
never used as if it were ours: the process starts safe or refuses, as the
config says.
"""

from __future__ import annotations

import logging

from proxy.config.plan import Rollout, StateConfig
from proxy.control.controller import Controller
from proxy.control.state import Event, RolloutState, StateError, Status
from proxy.control.store import FileStore, MemoryStore, StateStore
from proxy.timing.clock import Clock

log = logging.getLogger("veer.rollout")


def open_store(cfg: StateConfig, clock: Clock) -> StateStore:
    """The configured store, locked for this process."""
    if cfg.path is None:
        return MemoryStore(cfg.max_events)
    store = FileStore(cfg.path, cfg.max_events, clock)
    store.lock()
    return store


async def load_state(store: StateStore, rollout: Rollout, cfg: StateConfig,
                     now: float) -> tuple[RolloutState, int]:
    """The saved state (and its version) if it fits this rollout; otherwise start safe or
    refuse, as configured.

    A state file that cannot be read, or that belongs to another rollout or plan, is
    kept aside (never overwritten); ``safe`` starts with all traffic on original and
    status needs-attention, ``refuse`` raises ``StateError`` saying why.
    """
    problem = ""
    version = 0
    try:
        state, version = await store.load()
    except StateError as exc:
        state, problem = None, str(exc)
    if state is not None and (state.rollout != rollout.name
                              or state.phase >= len(rollout.phases)):
        problem = (f"state belongs to rollout {state.rollout!r} phase {state.phase}, "
                   f"not this plan ({rollout.name!r}, {len(rollout.phases)} phases)")
        if isinstance(store, FileStore):
            problem += f" (kept aside as {store.keep_aside()})"
            version = 0
        state = None
    if not problem:
        return (state if state is not None else Controller.fresh_state(rollout, now)), version
    if cfg.on_corrupt == "refuse":
        raise StateError(problem + "; refusing to start (state.on_corrupt: refuse)")
    return safe_state(rollout, now, "state-unreadable", problem), version


def safe_state(rollout: Rollout, now: float, kind: str, problem: str) -> RolloutState:
    """All traffic on original, status needs-attention, and an event saying why."""
    log.error("%s; starting safe: all traffic to original, status needs-attention", problem)
    safe = RolloutState(rollout=rollout.name, status=Status.NEEDS_ATTENTION, weight_bp=0,
                        phase_started=now)
    safe.events.append(Event(now, kind, "?", str(Status.NEEDS_ATTENTION), problem, "veer"))
    return safe
