"""Where events go: the rollout's state when a rollout runs, else a bounded list in memory."""

from __future__ import annotations

from typing import Protocol

from proxy.control.state import Event


class EventLog(Protocol):
    """Something that takes an event made outside the controller (a reload, a manual weight)."""

    @property
    def events(self) -> list[Event]:
        """Every event kept, oldest first."""
        ...

    def record(self, event: Event) -> object:
        """Keep ``event`` (and, with a rollout, save and notify it like the controller's)."""
        ...


class Journal:
    """The events of a process without a rollout: the newest ``keep`` in memory."""

    def __init__(self, keep: int = 500) -> None:
        self.keep = keep
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)
        del self.events[:-self.keep]
