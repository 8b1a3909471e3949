"""Without a rollout: the operator's weight kept in a shared store, so every process
applies it.

The document is a ``RolloutState`` with no rollout name: its weight and its
events (manual weight changes). A change is compare-and-set, re-read and
retried on a conflict; a change made elsewhere arrives through ``watch``.
Until anyone sets a weight, the config's weight applies.
"""

from __future__ import annotations

from proxy.control.state import Event, RolloutState
from proxy.control.store import StateStore, VersionConflict
from proxy.routing.live import LiveState

MANUAL = ""  # the rollout name of the manual-weights document


class SharedWeights:
    """The manual weight of processes that share ``store``."""

    def __init__(self, store: StateStore, live: LiveState, max_events: int = 500) -> None:
        self.store = store
        self.live = live
        self.max_events = max_events
        self.state = RolloutState(rollout=MANUAL, weight_bp=live.new_weight_bp)
        self.version = 0

    @property
    def events(self) -> list[Event]:
        """The manual weight changes, oldest first."""
        return self.state.events

    async def start(self) -> None:
        """Follow changes, and take the shared weight now if anyone set one (raises what
        the store raises when it cannot be read; the changes are still followed)."""
        self.store.watch(self._changed_elsewhere)
        state, version = await self.store.load()
        if state is not None:
            self._take(state, version)

    async def set(self, event: Event, weight_bp: int) -> None:
        """Write the new weight for everyone; applies here once written."""
        for _ in range(5):
            state = RolloutState(rollout=MANUAL, weight_bp=weight_bp,
                                 events=[*self.state.events, event][-self.max_events:])
            try:
                version = await self.store.save(state, self.version)
            except VersionConflict:
                loaded, version = await self.store.load()
                if loaded is not None:
                    self._take(loaded, version)
                continue
            self._take(state, version)
            return
        raise VersionConflict("the shared weight kept changing; not written")

    def _changed_elsewhere(self, state: RolloutState, version: int) -> None:
        if version > self.version:
            self._take(state, version)

    def _take(self, state: RolloutState, version: int) -> None:
        if state.rollout != MANUAL:
            return  # a rollout's document: not ours to apply
        self.state, self.version = state, version
        self.live.set_weight(state.weight_bp)

    async def close(self) -> None:
        """Release the store."""
        await self.store.close()
