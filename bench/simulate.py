"""The real rollout controller against synthetic traffic in fake time.

No sockets, no sleeping: every run draws its traffic up front from a seeded numpy
generator (Poisson requests per 250 ms tick, binomial failures and slow requests),
feeds the cumulative counts to ``proxy.control.controller.Controller`` through a fake
telemetry, and calls ``tick(now)`` with a fake clock, so an hour takes a second or
so. The same traffic is judged by a small model of Flagger's default analysis
(one check a minute on the last minute's point estimates, one failed check rolls
back), so both policies see identical requests.

Scenarios: A/A (healthy new, counts false rollbacks), an error fault (0.1% -> 10%)
and a latency fault (p99 50 ms -> 400 ms) at a random time; the time from the fault
to weight 0 is measured. Prints Markdown. Not part of the test suite; see
bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy
from scipy import stats

from proxy.config.plan import Rollout, read_rollout
from proxy.config.reader import Reader
from proxy.control import analysis
from proxy.control.controller import Controller
from proxy.control.state import Status
from proxy.routing.variant import NEW, Variant
from proxy.telemetry.source import Totals

T0 = 1_700_000_000.0  # the fake clock's start (unix seconds)
TICK = 0.25  # seconds; must match the plan's tick
ERROR_LIMIT = 0.01
P99_LIMIT = 0.2  # seconds
PLAN: dict[str, Any] = {
    "name": "sim", "tick": "250ms",
    "plan": [
        {"name": "canary", "weight": 10, "duration": "24h",
         "gates": {"max_error_rate": "1%", "max_p99": "200ms", "min_requests": 500}},
        {"name": "full", "weight": 100},
    ],
}
SCENARIO_KEYS = ("aa", "error", "latency")
EXPERIMENT_KEYS = ("CUSUM_H", "CUSUM_SHIFT", "BREACH_ALPHA")
IntArray = npt.NDArray[np.int64]


# -- the model -------------------------------------------------------------------
def slow_fraction(p99: float, limit: float, sigma: float) -> float:
    """P(latency > limit) for a lognormal with shape ``sigma`` whose 99th percentile is ``p99``."""
    median = p99 / math.exp(sigma * float(stats.norm.ppf(0.99)))
    return float(stats.lognorm.sf(limit, sigma, scale=median))


@dataclass(frozen=True, slots=True)
class Scenario:
    """One kind of run: traffic on new before and after an (optional) fault."""

    key: str
    title: str
    runs: int
    rate: float  # requests/s on new
    error_before: float
    error_after: float
    slow_before: float  # P(latency > P99_LIMIT)
    slow_after: float
    fault_from: float | None  # None: no fault (A/A); else the fault is uniform in [from, to] s
    fault_to: float
    horizon: float  # A/A: the whole run; with a fault: how long after it before a miss


@dataclass(frozen=True, slots=True)
class FlaggerDefault:
    """Flagger's analysis as configured by default: every ``interval`` the metrics are point
    estimates over the last ``interval`` (Prometheus ``rate(...[1m])``); a check fails when an
    estimate is over its limit; ``threshold`` failed checks roll back. No traffic in the
    window: the check is skipped (Flagger halts advancement but counts no failure)."""

    interval: float = 60.0
    max_error_rate: float = ERROR_LIMIT
    max_slow_fraction: float = 0.01  # the window's empirical p99 > limit <=> > 1% slower
    threshold: int = 1

    def first_rollback(self, requests: IntArray, failures: IntArray, slow: IntArray,
                       tick: float) -> float | None:
        """Seconds from the start to the rollback, or None within the traffic given."""
        per = round(self.interval / tick)
        if not math.isclose(per * tick, self.interval):
            raise ValueError("the interval must be a whole number of ticks")
        k = len(requests) // per
        req, fail, sl = (a[:k * per].reshape(k, per).sum(axis=1).tolist()
                         for a in (requests, failures, slow))
        failed = 0
        for i in range(k):
            if req[i] == 0:
                continue
            if fail[i] / req[i] > self.max_error_rate or sl[i] / req[i] > self.max_slow_fraction:
                failed += 1
                if failed >= self.threshold:
                    return (i + 1) * self.interval
        return None


class SimTelemetry:
    """The controller's view of traffic: cumulative totals the loop sets before each tick."""

    def __init__(self) -> None:
        self.new = Totals()
        self.original = Totals()  # no gate here compares against original
        self.watched: tuple[float | None, float | None] = (None, None)
        self._values = np.arange(1, 1001, dtype=np.float64) / 1000
        self._zeros = np.zeros(1000, dtype=np.float64)

    def totals(self, variant: Variant) -> Totals:
        return self.new if variant == NEW else self.original

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        self.watched = (p99_limit, p999_limit)

    def mark(self) -> None:
        pass

    def latency_histograms(
        self,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return self._values, self._zeros, self._zeros


_ROLLOUT: Rollout | None = None


def plan() -> Rollout:
    global _ROLLOUT
    if _ROLLOUT is None:
        rollout = read_rollout(Reader("<simulate>", dict(PLAN), "rollout"))
        assert rollout is not None and math.isclose(rollout.tick, TICK)
        _ROLLOUT = rollout
    return _ROLLOUT


def draw_traffic(rng: np.random.Generator, sc: Scenario, ticks: int,
                 fault_at: float) -> tuple[IntArray, IntArray, IntArray]:
    """Requests, failures and slow requests per tick; the tick holding the fault is split."""
    ends = np.arange(1, ticks + 1, dtype=np.float64) * TICK
    after = np.clip((ends - fault_at) / TICK, 0.0, 1.0)  # share of the tick after the fault
    n_before = rng.poisson(sc.rate * TICK * (1.0 - after))
    n_after = rng.poisson(sc.rate * TICK * after)
    failures = rng.binomial(n_before, sc.error_before) + rng.binomial(n_after, sc.error_after)
    slow = rng.binomial(n_before, sc.slow_before) + rng.binomial(n_after, sc.slow_after)
    return n_before + n_after, failures, slow


def run_veer(requests: IntArray, failures: IntArray,
             slow: IntArray) -> tuple[float | None, int, float]:
    """(seconds to the rollback or None, ticks run, wall seconds spent ticking)."""
    rollout = plan()
    tel = SimTelemetry()
    ctl = Controller(rollout, tel, Controller.fresh_state(rollout, T0), T0)
    assert tel.watched == (P99_LIMIT, None)
    req, fail, sl = (np.cumsum(a).tolist() for a in (requests, failures, slow))
    started = time.perf_counter()
    for i in range(len(req)):
        tel.new = Totals(req[i], fail[i], sl[i], 0)
        now = T0 + (i + 1) * TICK
        events = ctl.tick(now)
        if events:
            kinds = [e.kind for e in events]
            if kinds != ["rollback"]:
                raise RuntimeError(f"unexpected events at {now - T0:.2f}s: {kinds}")
            assert ctl.state.status is Status.ROLLED_BACK and ctl.state.weight_bp == 0
            return now - T0, i + 1, time.perf_counter() - started
    return None, len(req), time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class RunResult:
    fault_at: float | None  # seconds from the start
    veer: float | None  # seconds from the start to weight 0; None: not within the run
    flagger: float | None
    ticks: int
    tick_seconds: float


def simulate(task: tuple[Scenario, int, int, FlaggerDefault]) -> RunResult:
    """One run; its generator is seeded by (seed, scenario, run), whatever the worker."""
    sc, run, seed, flagger = task
    rng = np.random.default_rng([seed, SCENARIO_KEYS.index(sc.key), run])
    if sc.fault_from is None:
        fault_at, duration = math.inf, sc.horizon
    else:
        fault_at = float(rng.uniform(sc.fault_from, sc.fault_to))
        duration = fault_at + sc.horizon
    traffic = draw_traffic(rng, sc, math.ceil(duration / TICK - 1e-9), fault_at)
    veer, ticks, spent = run_veer(*traffic)
    return RunResult(None if sc.fault_from is None else fault_at, veer,
                     flagger.first_rollback(*traffic, TICK), ticks, spent)


def apply_experiment(overrides: dict[str, float]) -> None:
    """Override gate constants in this process (``--experiment``; never in a default run)."""
    for key, value in overrides.items():
        setattr(analysis, key, value)
    if "CUSUM_H" in overrides:  # the default argument was bound when the module loaded
        for_limit: Any = analysis.Cusum.for_limit
        for_limit.__defaults__ = (overrides["CUSUM_H"],)


def effective_constants() -> dict[str, float]:
    for_limit: Any = analysis.Cusum.for_limit
    return {"CUSUM_H": float(for_limit.__defaults__[0]),
            "CUSUM_SHIFT": analysis.CUSUM_SHIFT, "BREACH_ALPHA": analysis.BREACH_ALPHA}


# -- summarising -------------------------------------------------------------------
@dataclass(slots=True)
class Summary:
    runs: int = 0
    false: int = 0
    misses: int = 0
    detections: list[float] = field(default_factory=list)

    def add(self, fault_at: float | None, rollback: float | None) -> None:
        self.runs += 1
        if fault_at is None:
            self.false += rollback is not None
        elif rollback is None:
            self.misses += 1
        elif rollback < fault_at:
            self.false += 1
        else:
            self.detections.append(rollback - fault_at)

    def stat(self, q: float) -> float | None:
        return float(np.percentile(self.detections, q)) if self.detections else None


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_pct(value: float) -> str:
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.2g}"


def build_scenarios(a: argparse.Namespace) -> list[Scenario]:
    healthy = slow_fraction(a.p99_before, P99_LIMIT, a.sigma)
    faulty = slow_fraction(a.p99_after, P99_LIMIT, a.sigma)
    runs = {k: getattr(a, f"{k}_runs") or a.runs or (40 if a.quick else 200)
            for k in SCENARIO_KEYS}
    window = f"fault uniform in {a.fault_from:g}..{a.fault_to:g} s"
    all_scenarios = [
        Scenario("aa", f"A/A ({a.aa_error:.2%} errors, {a.aa_duration / 3600:g} h)", runs["aa"],
                 a.rate, a.aa_error, a.aa_error, healthy, healthy, None, 0.0, a.aa_duration),
        Scenario("error", f"error fault {a.base_error:.1%} -> {a.fault_error:.0%} ({window})",
                 runs["error"], a.rate, a.base_error, a.fault_error, healthy, healthy,
                 a.fault_from, a.fault_to, a.horizon),
        Scenario("latency", f"latency fault p99 {a.p99_before * 1e3:g} -> "
                 f"{a.p99_after * 1e3:g} ms ({window})", runs["latency"], a.rate,
                 a.base_error, a.base_error, healthy, faulty, a.fault_from, a.fault_to,
                 a.horizon),
    ]
    return [s for s in all_scenarios if s.key in a.scenarios]


def parse_experiment(items: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in EXPERIMENT_KEYS or not value:
            raise SystemExit(f"--experiment wants KEY=VALUE with KEY in {EXPERIMENT_KEYS}")
        out[key] = float(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, help="runs per scenario (default 200, --quick 40)")
    p.add_argument("--quick", action="store_true", help="40 runs per scenario")
    for k in SCENARIO_KEYS:
        p.add_argument(f"--{k}-runs", type=int, help=f"runs of the {k} scenario")
    p.add_argument("--scenarios", default=",".join(SCENARIO_KEYS),
                   type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated subset of aa,error,latency")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes (results do not depend on it)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s on new")
    p.add_argument("--aa-duration", type=float, default=3600.0, help="A/A run length, s")
    p.add_argument("--aa-error", type=float, default=0.005, help="A/A error rate")
    p.add_argument("--base-error", type=float, default=0.001, help="healthy error rate")
    p.add_argument("--fault-error", type=float, default=0.10, help="error rate after the fault")
    p.add_argument("--p99-before", type=float, default=0.05, help="healthy p99, s")
    p.add_argument("--p99-after", type=float, default=0.4, help="p99 after the fault, s")
    p.add_argument("--sigma", type=float, default=0.5, help="lognormal shape")
    p.add_argument("--fault-from", type=float, default=60.0, help="earliest fault, s")
    p.add_argument("--fault-to", type=float, default=600.0, help="latest fault, s")
    p.add_argument("--horizon", type=float, default=600.0,
                   help="seconds after the fault without a rollback that count as a miss")
    p.add_argument("--flagger-interval", type=float, default=60.0)
    p.add_argument("--flagger-threshold", type=int, default=1)
    p.add_argument("--experiment", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override proxy.control.analysis constants {EXPERIMENT_KEYS} "
                        "(not the product)")
    a = p.parse_args(argv)
    if unknown := set(a.scenarios) - set(SCENARIO_KEYS):
        p.error(f"unknown scenarios {sorted(unknown)}")
    if any(n is not None and n < 1 for n in (a.runs, a.aa_runs, a.error_runs, a.latency_runs)):
        p.error("runs must be at least 1")
    if not 0 <= a.fault_from <= a.fault_to:
        p.error("need 0 <= --fault-from <= --fault-to")
    overrides = parse_experiment(a.experiment)
    apply_experiment(overrides)
    scenarios = build_scenarios(a)
    flagger = FlaggerDefault(interval=a.flagger_interval, threshold=a.flagger_threshold)

    started = time.perf_counter()
    tasks = [(sc, run, a.seed, flagger) for sc in scenarios for run in range(sc.runs)]
    if a.workers > 1:
        with ProcessPoolExecutor(a.workers, initializer=apply_experiment,
                                 initargs=(overrides,)) as pool:
            results = list(pool.map(simulate, tasks, chunksize=2))
    else:
        results = [simulate(t) for t in tasks]
    wall = time.perf_counter() - started

    summaries: dict[tuple[str, str], Summary] = {}
    for (sc, _, _, _), r in zip(tasks, results, strict=True):
        summaries.setdefault((sc.key, "veer"), Summary()).add(r.fault_at, r.veer)
        summaries.setdefault((sc.key, "flagger-default"), Summary()).add(r.fault_at, r.flagger)
    ticks = sum(r.ticks for r in results)
    tick_cpu = sum(r.tick_seconds for r in results)
    report(a, scenarios, summaries, flagger, overrides, wall, ticks, tick_cpu)
    return 0


def report(a: argparse.Namespace, scenarios: list[Scenario],
           summaries: dict[tuple[str, str], Summary], flagger: FlaggerDefault,
           overrides: dict[str, float], wall: float, ticks: int, tick_cpu: float) -> None:
    consts = effective_constants()
    healthy = slow_fraction(a.p99_before, P99_LIMIT, a.sigma)
    faulty = slow_fraction(a.p99_after, P99_LIMIT, a.sigma)
    print("# veer rollout simulation\n")
    print(f"- command: `{shlex.join(sys.orig_argv)}`")
    print(f"- seed: {a.seed}; workers: {a.workers}; wall time: {wall:.1f} s; "
          f"controller ticks: {ticks:,} ({tick_cpu / max(ticks, 1) * 1e6:.1f} us/tick)")
    print(f"- Python {platform.python_version()}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, {platform.machine()}")
    label = "EXPERIMENT, not the product's values" if overrides else "the product's values"
    print("- proxy.control.analysis: " + ", ".join(f"{k}={v:g}" for k, v in consts.items())
          + f" ({label})")
    print("- plan: one phase `canary` at 10% for 24h, tick 250ms, gates max_error_rate 1%, "
          "max_p99 200ms, min_requests 500; rollback = status rolled-back, weight 0")
    print(f"- traffic on new: Poisson {a.rate:g} req/s; latency lognormal sigma {a.sigma:g}: "
          f"p99 {a.p99_before * 1e3:g} ms -> P(>200 ms) = {fmt_pct(healthy)}, "
          f"p99 {a.p99_after * 1e3:g} ms -> P(>200 ms) = {fmt_pct(faulty)}")
    print(f"- flagger-default: a check every {flagger.interval:g} s on the last "
          f"{flagger.interval:g} s (error rate > 1% or > 1% of requests slower than 200 ms "
          f"fails), threshold {flagger.threshold}, windows without traffic skipped")
    print(f"- a miss: no rollback within {a.horizon:g} s of the fault; detection = rollback "
          "time - fault time; p95 by linear interpolation\n")

    print("| scenario | policy | runs | false rollbacks | detection median (s) | p95 (s) "
          "| max (s) | misses |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for sc in scenarios:
        for policy in ("veer", "flagger-default"):
            s = summaries[(sc.key, policy)]
            fault = sc.fault_from is not None
            print(f"| {sc.title} | {policy} | {s.runs} | {s.false} ({s.false / s.runs:.1%}) "
                  f"| {fmt_s(s.stat(50)) if fault else '-'} | {fmt_s(s.stat(95)) if fault else '-'}"
                  f" | {fmt_s(max(s.detections, default=None)) if fault else '-'} "
                  f"| {s.misses if fault else '-'} |")

    faults = [sc for sc in scenarios if sc.fault_from is not None]
    if faults:
        print("\n| scenario | veer median (s) | flagger-default median (s) | flagger / veer |")
        print("|---|---:|---:|---:|")
        for sc in faults:
            v = summaries[(sc.key, "veer")].stat(50)
            f = summaries[(sc.key, "flagger-default")].stat(50)
            ratio = f"{f / v:.1f}x" if v and f is not None else "-"
            print(f"| {sc.key} fault | {fmt_s(v)} | {fmt_s(f)} | {ratio} |")

    print("\nTargets (veer):\n")
    checks: list[tuple[str, str, float | None, float]] = []
    if "aa" in a.scenarios:
        s = summaries[("aa", "veer")]
        checks.append(("aa", "A/A false rollbacks <= 1% of runs", s.false / s.runs, 0.01))
    if "error" in a.scenarios:
        s = summaries[("error", "veer")]
        checks.append(("error", "error fault: median <= 1 s", s.stat(50), 1.0))
        checks.append(("error", "error fault: p95 <= 2 s", s.stat(95), 2.0))
    if "latency" in a.scenarios:
        checks.append(("latency", "latency fault: median <= 2 s",
                       summaries[("latency", "veer")].stat(50), 2.0))
    for key, what, value, limit in checks:
        s = summaries[(key, "veer")]
        met = value is not None and value <= limit and (key == "aa" or s.misses == 0)
        shown = "-" if value is None else (f"{value:.1%}" if key == "aa" else f"{value:.2f} s")
        extra = f", {s.misses} misses" if key != "aa" and s.misses else ""
        print(f"- {what}: {shown}{extra} -> {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
