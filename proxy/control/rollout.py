"""Runs the controller in a live process: schedules ticks, applies weights, persists, notifies.

The loop only sleeps and calls ``step``; every decision is the controller's.
After each tick or action the runner writes the controller's weight and
cohorts to the ``LiveState`` the router reads (the next request sees them),
saves the state when it changed (in the background: a tick never waits on a
disk), and hands the events to the webhook notifier, which never blocks.

Before deciding anything it asks the ``Lease``. Without it (another replica
leads) the runner takes what the leader saves, and an operator's action is
written straight to the shared store by compare-and-set, so it applies on
every replica whichever one was asked. On taking the lease it first reloads
the shared state, so a new leader goes on from the phase the old one left.

With a shared store, nothing moves away from safety on one replica alone: an
operator's action applies once it is saved (else a 503 and no change), and
the leader's own advance applies once it is saved; a rollback applies at
once (the local fail-safe) and is saved when the store answers. A leader
that loses the lease with decisions unsaved takes the shared state again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proxy.config.plan import Rollout
from proxy.control.controller import Controller
from proxy.control.lease import Lease
from proxy.control.metric_gates import PolledMetrics
from proxy.control.state import Event, RolloutState
from proxy.control.store import StateStore, VersionConflict
from proxy.control.webhooks import ConfirmGate, Notifier
from proxy.routing.live import LiveState
from proxy.telemetry.source import TelemetrySource
from proxy.timing.clock import Clock
from proxy.timing.tasks import cancel

log = logging.getLogger("veer.rollout")


class StateSaveError(Exception):
    """An action applied in memory whose state could not be written; saving is retried on
    every tick until it succeeds."""


class RolloutRunner:
    """The controller's life in a process: tick loop, weights, persistence, webhooks."""

    def __init__(self, rollout: Rollout, store: StateStore, telemetry: TelemetrySource,
                 live: LiveState, clock: Clock, lease: Lease, state: RolloutState,
                 version: int = 0, max_events: int = 500,
                 polled: PolledMetrics | None = None) -> None:
        self.rollout = rollout
        self.store = store
        self.live = live
        self.clock = clock
        self.lease = lease
        self.max_events = max_events
        self.controller = Controller(rollout, telemetry, state, clock.wall(), polled)
        self.notifier = Notifier(rollout.notify) if rollout.notify else None
        self.confirm = ConfirmGate(rollout.confirm) if rollout.confirm else None
        self.rollbacks: dict[str, int] = {}  # by reason, for /metrics
        self.save_error: Exception | None = None  # the last save's failure, until one works
        self._task: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._version = version
        self._wanted = self._saved = 0  # generations of the state: changed, written
        self._closed = False  # the store is released: nothing more is written
        self._leading = lease.held(clock.wall())
        self._taking_over: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None  # lost the lease with unsaved changes
        store.watch(self._changed_elsewhere)
        if store.shared and version > 0:
            self.apply()  # the cluster's state, as saved: nothing to write
        else:
            self.controller.dirty = True  # write the state we start from (shared: the
            self._after([])               # leader writes it, then every replica applies it)

    @property
    def events(self) -> list[Event]:
        """The rollout's events, oldest first."""
        return self.controller.state.events

    async def start(self) -> None:
        """Start webhooks and the tick loop."""
        if self.notifier is not None:
            await self.notifier.start()
        if self.confirm is not None:
            await self.confirm.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="veer-rollout")

    async def stop(self) -> None:
        """Stop the loop, write what is unsaved, flush notifications, release the store."""
        await cancel(self._task)
        await cancel(self._taking_over)
        await cancel(self._resync)
        self._task = self._taking_over = self._resync = None
        try:
            try:
                await self.flush()
            except StateSaveError as exc:
                log.error("%s", exc)
            finally:
                self._closed = True  # no save may start once the lock is let go
                await cancel(self._saver)
            try:
                if self.confirm is not None:
                    await self.confirm.stop()
            finally:
                if self.notifier is not None:
                    await self.notifier.stop()
        finally:
            await self.store.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.rollout.tick)
            try:
                self.step()
            except Exception:  # analysis errors record and carry on; never crash the proxy
                log.exception("controller tick failed")

    def step(self) -> list[Event]:
        """One tick: decide (if this process holds the lease), apply, persist, notify."""
        self._save_in_background()  # retries a save that failed
        c = self.controller
        now = self.clock.wall()
        if not self.lease.held(now):
            if self._leading and self.store.shared and self._saved < self._wanted:
                self._resync_soon()
            self._leading = False
            c.observe(now)  # the leader's verdicts, shown here too
            return []
        if not self._leading:  # just took the lease: first read where the last leader left
            if self._taking_over is None:
                self._taking_over = asyncio.get_running_loop().create_task(
                    self._take_over(), name="veer-take-over")
            if not self._taking_over.done():
                return []
            self._taking_over = None
            self._leading = True
        if self.confirm is not None and c.confirm_request is not None:
            key = c.confirm_request
            result = self.confirm.result(key)
            if result is None:
                self.confirm.request(key, {"rollout": self.rollout.name, "phase": c.phase.name,
                                           "next": c.state.phase + 1})
            else:
                c.confirmed(key, result)
        return self._after(c.tick(now))

    async def act(self, action: str, actor: str, **kwargs: Any) -> list[Event]:
        """Run a controller action (advance, promote, ...), apply it at once, and return
        once it is saved (``StateSaveError`` if it could not be: it applies in memory)."""
        now = self.clock.wall()
        if not self.lease.held(now) or self.store.shared:
            return await self._act_shared(action, actor, now, kwargs)
        method = getattr(self.controller, action)
        events: list[Event] = self._after(method(now, actor, **kwargs))
        await self.flush()
        return events

    async def _act_shared(self, action: str, actor: str, now: float,
                          kwargs: dict[str, Any]) -> list[Event]:
        """An action on a replica that does not lead: compare-and-set on the shared state
        (re-read and re-applied on a conflict); not applied at all if it cannot be saved."""
        for _ in range(5):
            try:
                state, version = await self.store.load()  # act on the newest, not a stale copy
            except Exception as exc:
                raise StateSaveError(f"rollout state not readable ({exc}); the action was "
                                     "not applied") from None
            if state is not None and version > self._version:
                self._take(state, version)
            before = RolloutState.from_dict(self.controller.state.to_dict())
            events: list[Event] = getattr(self.controller, action)(now, actor, **kwargs)
            self.controller.dirty = False  # written here, not by the background saver
            try:
                self._version = await self.store.save(self.controller.state, self._version)
            except VersionConflict:
                self._take(before, self._version)
                continue
            except Exception as exc:
                self._take(before, self._version)
                raise StateSaveError(f"rollout state not saved ({exc}); the action was not "
                                     "applied") from None
            return self._after(events)
        raise StateSaveError("the shared rollout state kept changing; the action was not "
                             "applied")

    def record(self, event: Event) -> list[Event]:
        """Add an event made outside the controller (a reload): saved and notified like any."""
        self.controller.state.events.append(event)
        self.controller.dirty = True
        return self._after([event])

    def apply(self) -> None:
        """Put the controller's weight and cohorts on the live state (the next request
        sees them)."""
        c = self.controller
        allow_users, allow_groups = c.allowed()
        self.live.set_cohorts(allow_users, allow_groups, frozenset(c.state.deny_users))
        self.live.set_weight(c.weight_bp)
        self.live.set_mirror(c.mirror_bp)

    async def flush(self) -> None:
        """Wait until the state as it is now is saved; ``StateSaveError`` if it cannot be.
        A process without the lease has nothing of its own to save."""
        if not self.lease.held(self.clock.wall()):
            return
        self._save_in_background()  # one attempt, or the one under way
        saver = self._saver
        if saver is not None and not saver.done():
            await asyncio.shield(saver)
        if self._saved < self._wanted:
            failed = self.save_error
            cause = getattr(failed, "strerror", None) or failed
            raise StateSaveError(f"rollout state not saved ({cause}); the change applies in "
                                 "memory and saving is retried every tick")

    def _after(self, events: list[Event]) -> list[Event]:
        c = self.controller
        if not (c.dirty and self.store.shared and self._widens()):
            self.apply()  # else once saved (_save): no replica moves away from safety alone
        if c.dirty:
            c.dirty = False
            del c.state.events[:-self.max_events]
            if self.lease.held(self.clock.wall()):  # only the lease holder writes
                self._wanted += 1
            self.save_error = None  # a new state: try it, even after a failure
            self._save_in_background()
        for e in events:
            if e.kind.startswith("rollback") and e.kind != "rollback-step":
                reason = ("breach" if e.actor == "controller" and e.kind == "rollback"
                          else e.kind.replace("rollback", "manual"))
                self.rollbacks[reason] = self.rollbacks.get(reason, 0) + 1
            log.info("rollout %s: %s %s -> %s (%s, by %s)", self.rollout.name, e.kind, e.from_,
                     e.to, e.reason, e.actor)
            if self.notifier is not None:
                self.notifier.notify({"rollout": self.rollout.name, **e.to_dict()})
        return events

    def _save_in_background(self) -> None:
        if self._closed or not self.lease.held(self.clock.wall()):
            return  # only the lease holder writes; the others take what it saves
        if self._saved < self._wanted and (self._saver is None or self._saver.done()):
            self._saver = asyncio.get_running_loop().create_task(self._save(),
                                                                 name="veer-state-save")

    async def _save(self) -> None:
        """Write the newest state until what is written is what is wanted, or it fails."""
        while self._saved < self._wanted:
            wanted = self._wanted
            try:
                self._version = await self.store.save(self.controller.state, self._version)
            except Exception as exc:  # disk full, read-only, changed by someone else, ...
                if self.save_error is None:
                    hint = ("; it was changed outside this veer and is not overwritten"
                            if isinstance(exc, VersionConflict) else "")
                    log.error("rollout state not saved: %s%s (retried every tick)", exc, hint)
                self.save_error = exc
                return
            self._saved = wanted
            self.save_error = None
            if self.store.shared:
                self.apply()  # an advance held back until it was saved

    def _widens(self) -> bool:
        """Whether the controller's state puts more users on new than the live state."""
        live = self.live
        allow_users, allow_groups = self.controller.allowed()
        return (self.controller.weight_bp > live.new_weight_bp
                or not allow_users <= live.allow_users or not allow_groups <= live.allow_groups
                or not live.deny_users <= frozenset(self.controller.state.deny_users))

    def _resync_soon(self) -> None:
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._take_shared(),
                                                                  name="veer-resync")

    async def _take_shared(self) -> None:
        """Lost the lease with decisions unsaved: the shared state is the truth again (a
        local rollback stays until it can be read)."""
        while True:
            try:
                state, version = await self.store.load()
            except Exception:  # the store is away: keep what applies here, try again
                await asyncio.sleep(self.rollout.tick)
                continue
            self._saved = self._wanted
            if state is not None:
                self._take(state, version)
            return

    def _changed_elsewhere(self, state: RolloutState, version: int) -> None:
        """Another process saved: take its state (the lease holder's decisions) as ours."""
        if version > self._version:
            self._take(state, version)

    def _take(self, state: RolloutState, version: int) -> None:
        """Make ``state`` ours; a new phase re-arms the telemetry for its gates."""
        old = self.controller.state
        self._version = version
        self.controller.state = state
        if (state.phase, state.phase_started, state.status) != (old.phase, old.phase_started,
                                                                  old.status):
            self.controller.resume_phase(self.clock.wall())
        self.apply()

    async def _take_over(self) -> None:
        """Read the shared state before the first decision as leader."""
        try:
            state, version = await self.store.load()
        except Exception as exc:  # Redis away again: decide from what we last knew
            log.warning("rollout state not reloaded on taking the lease: %s", exc)
            return
        if state is not None and version >= self._version:
            self._take(state, version)
        elif state is None:  # nothing shared yet (a fresh cluster, or Redis lost it): ours
            self.controller.dirty = True
            self._after([])
        self.controller.resume_phase(self.clock.wall())  # judge from here, not stale bases
