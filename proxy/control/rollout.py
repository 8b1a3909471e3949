"""Runs the controller in a live process: schedules ticks, applies weights, persists, notifies.

The loop only sleeps and calls ``step``; every decision is the controller's.
After each tick or action the runner applies the controller's weight and
cohorts to the router (the next request sees them), writes the state if it
changed, and hands the events to the webhook notifier, which never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from proxy.config.plan import Rollout, StateConfig
from proxy.control.controller import Controller
from proxy.control.state import (
    Event,
    FileStore,
    MemoryStore,
    RolloutState,
    StateError,
    StateStore,
    Status,
)
from proxy.control.webhooks import ConfirmGate, Notifier
from proxy.runtime.runtime import Runtime
from proxy.telemetry.source import RecorderTelemetry
from proxy.timing.tasks import cancel

log = logging.getLogger("veer.rollout")


class StateSaveError(Exception):
    """An action applied in memory whose state could not be written; saving is retried on
    every tick until it succeeds."""


def open_store(cfg: StateConfig) -> StateStore:
    """The configured store, locked for this process."""
    if cfg.path is None:
        return MemoryStore()
    store = FileStore(cfg.path, cfg.max_events)
    store.lock()
    return store


def load_state(store: StateStore, rollout: Rollout, cfg: StateConfig,
               now: float) -> RolloutState:
    """The saved state if it fits this rollout; otherwise start safe or refuse, as configured.

    A state file that cannot be read, or that belongs to another rollout or plan, is
    kept aside (never overwritten); ``safe`` starts with all traffic on original and
    status needs-attention, ``refuse`` raises ``StateError`` saying why.
    """
    problem = ""
    try:
        state = store.load()
    except StateError as exc:
        state, problem = None, str(exc)
    if state is not None and (state.rollout != rollout.name
                              or state.phase >= len(rollout.phases)):
        problem = (f"state belongs to rollout {state.rollout!r} phase {state.phase}, "
                   f"not this plan ({rollout.name!r}, {len(rollout.phases)} phases)")
        if isinstance(store, FileStore):
            problem += f" (kept aside as {store._keep_aside()})"
        state = None
    if not problem:
        return state if state is not None else Controller.fresh_state(rollout, now)
    if cfg.on_corrupt == "refuse":
        raise StateError(problem + "; refusing to start (state.on_corrupt: refuse)")
    log.error("%s; starting safe: all traffic to original, status needs-attention", problem)
    safe = RolloutState(rollout=rollout.name, status=Status.NEEDS_ATTENTION, weight_bp=0,
                        phase_started=now)
    safe.events.append(Event(now, "state-unreadable", "?", str(Status.NEEDS_ATTENTION),
                             problem, "veer"))
    return safe


class RolloutRunner:
    """The controller's life in a process: tick loop, weights, persistence, webhooks."""

    def __init__(self, rt: Runtime, rollout: Rollout, store: StateStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.rt = rt
        self.rollout = rollout
        self.store = store
        self.clock = clock
        now = clock()
        state = load_state(store, rollout, rt.config.state, now)
        telemetry = RecorderTelemetry(rt.recorder, rt.loop.time)
        self.controller = Controller(rollout, telemetry, state, now)
        self.notifier = Notifier(rollout.notify) if rollout.notify else None
        self.confirm = ConfirmGate(rollout.confirm) if rollout.confirm else None
        self._task: asyncio.Task[None] | None = None
        self.rollbacks: dict[str, int] = {}  # by reason, for /metrics
        self.controller.dirty = True  # write the state we start from
        self._after([])

    async def start(self) -> None:
        """Start webhooks and the tick loop."""
        if self.notifier is not None:
            await self.notifier.start()
        if self.confirm is not None:
            await self.confirm.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="veer-rollout")

    async def stop(self) -> None:
        """Stop the loop, flush notifications, release the state file."""
        await cancel(self._task)
        self._task = None
        try:
            if self.confirm is not None:
                await self.confirm.stop()
            if self.notifier is not None:
                await self.notifier.stop()
        finally:
            self.store.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.rollout.tick)
            try:
                self.step()
            except Exception:  # analysis errors record and carry on; never crash the proxy
                log.exception("controller tick failed")

    def step(self) -> list[Event]:
        """One tick: decide, apply, persist, notify."""
        c = self.controller
        if self.confirm is not None and c.confirm_request is not None:
            key = c.confirm_request
            result = self.confirm.result(key)
            if result is None:
                self.confirm.request(key, {"rollout": self.rollout.name, "phase": c.phase.name,
                                           "next": c.state.phase + 1})
            else:
                c.confirmed(key, result)
        try:
            return self._after(c.tick(self.clock()))
        except StateSaveError as exc:
            log.error("%s", exc)
            return []

    def act(self, action: str, actor: str, **kwargs: Any) -> list[Event]:
        """Run a controller action (advance, promote, ...) and apply it at once."""
        method = getattr(self.controller, action)
        events: list[Event] = method(self.clock(), actor, **kwargs)
        return self._after(events)

    def record(self, event: Event) -> list[Event]:
        """Add an event made outside the controller (a reload): saved and notified like any."""
        self.controller.state.events.append(event)
        self.controller.dirty = True
        return self._after([event])

    def apply(self) -> None:
        """Put the controller's weight and cohorts on the router (the next request sees them)."""
        c = self.controller
        allow_users, allow_groups = c.allowed()
        self.rt.router.set_overrides(allow_users, allow_groups, frozenset(c.state.deny_users))
        self.rt.set_weight(c.weight_bp)

    def _after(self, events: list[Event]) -> list[Event]:
        c = self.controller
        self.apply()
        failed: OSError | None = None
        if c.dirty:
            try:
                self.store.save(c.state)
                c.dirty = False
            except OSError as exc:  # disk full, read-only: keep serving, retry next tick
                failed = exc
        for e in events:
            if e.kind.startswith("rollback") and e.kind != "rollback-step":
                reason = ("breach" if e.actor == "controller" and e.kind == "rollback"
                          else e.kind.replace("rollback", "manual"))
                self.rollbacks[reason] = self.rollbacks.get(reason, 0) + 1
            log.info("rollout %s: %s %s -> %s (%s, by %s)", self.rollout.name, e.kind, e.from_,
                     e.to, e.reason, e.actor)
            if self.notifier is not None:
                self.notifier.notify({"rollout": self.rollout.name, **e.to_dict()})
        if failed is not None:
            raise StateSaveError(f"rollout state not saved ({failed.strerror or failed}); the "
                                 "change applies in memory and saving is retried every tick")
        return events
