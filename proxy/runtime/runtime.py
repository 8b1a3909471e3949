"""The one runtime object of a process: the data plane, and the control side around it.

Built once at start and passed explicitly to everything that needs it (the
admin API, reload, signals); there are no module-level singletons.
``Runtime`` is the ``DataPlane`` every connection shares, plus the rollout
runner when the config has a rollout and the journal events go to.
"""

from __future__ import annotations

import asyncio

from proxy.config.model import Config
from proxy.control.journal import EventLog, Journal
from proxy.control.rollout import RolloutRunner
from proxy.http.plane import DataPlane
from proxy.routing.variant import Variant
from proxy.timing.clock import Clock, SystemClock
from proxy.upstream.endpoint import Endpoint


class Runtime(DataPlane):
    """Everything one veer process shares."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 clock: Clock | None = None) -> None:
        super().__init__(config, loop)
        self.clock = clock or SystemClock()
        self.rollout: RolloutRunner | None = None  # set at start when the config has one
        self._journal = Journal()

    @property
    def journal(self) -> EventLog:
        """Where events made outside the controller go: the rollout's, else memory."""
        return self.rollout if self.rollout is not None else self._journal

    def endpoints(self) -> list[tuple[Variant, Endpoint]]:
        """Every endpoint of the current snapshot, with its variant."""
        return self.snapshot.pools.endpoints()
