"""The controller's view of the local recorder (a merged multi-process source comes later)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from proxy.control.controller import Totals
from proxy.routing.router import NEW, ORIGINAL, VARIANTS, Variant
from proxy.telemetry import latency
from proxy.telemetry.recorder import Recorder


class RecorderTelemetry:
    """Implements ``controller.Telemetry`` over a ``Recorder``; ``clock`` is loop time."""

    def __init__(self, recorder: Recorder, clock: Callable[[], float]) -> None:
        self.recorder = recorder
        self.clock = clock

    def totals(self, variant: Variant) -> Totals:
        r = self.recorder.variants[variant]
        return Totals(r.requests, r.failures, r.exceed_a, r.exceed_b)

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        for v in VARIANTS:
            self.recorder.variants[v].watch(
                None if p99_limit is None else int(p99_limit * 1e6),
                None if p999_limit is None else int(p999_limit * 1e6))

    def mark(self) -> None:
        self.recorder.mark(self.clock())

    def latency_histograms(
        self,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Values (seconds) and since-mark counts for new and original, trimmed to the
        range that has data."""
        now = self.clock()
        new = latency.counts(self.recorder.variants[NEW].since_marked(now).histogram)
        orig = latency.counts(self.recorder.variants[ORIGINAL].since_marked(now).histogram)
        used = np.flatnonzero(new + orig)
        end = int(used[-1]) + 1 if used.size else 1
        values = latency.index_values_us()[:end] / 1e6
        return values, new[:end].astype(np.float64), orig[:end].astype(np.float64)
