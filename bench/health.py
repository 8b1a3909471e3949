"""How fast veer's active health checks take a killed backend out of rotation, with no traffic.

Not part of the test suite; needs nothing beyond the project venv. Two demo backends
(``admin.demo.backend``, each in its own process) are veer's ``original`` and ``new``
endpoints; veer runs with ``health.active`` and no client sends it anything. Each round
SIGKILLs the ``new`` backend and polls the admin ``/metrics`` every 10 ms until
``veer_endpoint_healthy{endpoint="http://127.0.0.1:PORT",...}`` is 0, then restarts the
backend on the same port and waits until the gauge is back to 1. Everything listens on
127.0.0.1; every process started is stopped on exit (also on Ctrl-C and SIGTERM), by PID.

    .venv/bin/python bench/health.py                  # --kills 5, settings default and fast
    .venv/bin/python bench/health.py --kills 10 --settings fast
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

# bench/ is not a package; run as a script, bench/ is sys.path[0] (as compare.py does).
from baseline import free_port, stop, tail

REPO = Path(__file__).resolve().parent.parent

# name: (interval s, timeout s, healthy, unhealthy). "default" is veer's defaults
# (HAProxy's: inter 2s, rise 2, fall 3).
SETTINGS: dict[str, tuple[float, float, int, int]] = {
    "default": (2.0, 1.0, 2, 3),
    "fast": (0.2, 0.1, 2, 2),
}
VEER_CONF = """listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin}"}}
upstreams:
  original: {{endpoints: ["http://127.0.0.1:{original}"]}}
  new: {{endpoints: ["http://127.0.0.1:{new}"]}}
weights: {{new: 10}}
timeouts: {{drain: 1s}}
health:
  active: {{path: /healthz, interval: {interval}s, timeout: {timeout}s, healthy: {healthy},
           unhealthy: {unhealthy}}}
"""
# One demo backend (it answers 200 on any path, /healthz included) until killed.
BACKEND = """import asyncio, sys
from admin.demo.backend import start_backend
async def main():
    await start_backend(sys.argv[1], int(sys.argv[2]))
    await asyncio.Event().wait()
asyncio.run(main())
"""
GAUGE = re.compile(r"^veer_endpoint_healthy\{([^}]*)\}\s+(\S+)", re.M)


def die(msg: str) -> NoReturn:
    print(f"health: {msg}", file=sys.stderr)
    raise SystemExit(2)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Backend:
    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def label(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline: float) -> None:
        """Start (again) on the same port; a bind that fails (port briefly held) is retried."""
        while True:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", BACKEND, self.name, str(self.port)],
                    stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
            self.starts += 1
            while self.proc.poll() is None and time.monotonic() < deadline:
                if listening(self.port):
                    return
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                die(f"backend {self.name} not listening on :{self.port} in time:\n"
                    f"{tail(self.log)}")
            time.sleep(0.2)  # it exited (bind failed?): try again

    def kill(self) -> float:
        """SIGKILL; the monotonic time just before the signal."""
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)
        return t


class Metrics:
    """The admin /metrics over one keep-alive connection (reopened after an error)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.fetch_ms: list[float] = []

    def gauges(self) -> dict[str, float]:
        """endpoint label -> veer_endpoint_healthy value."""
        t0 = time.perf_counter()
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.conn.request("GET", "/metrics")
                text = self.conn.getresponse().read().decode()
                break
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        self.fetch_ms.append((time.perf_counter() - t0) * 1000)
        out = {}
        for labels, value in GAUGE.findall(text):
            ep = re.search(r'endpoint="([^"]*)"', labels)
            if ep:
                out[ep[1]] = float(value)
        return out

    def status_row(self, label: str) -> dict[str, Any] | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/status")
            rows = json.loads(conn.getresponse().read()).get("endpoints") or []
        finally:
            conn.close()
        return next((r for r in rows if r.get("endpoint") == label), None)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def wait_gauge(metrics: Metrics, label: str, want: float, poll: float, limit: float,
               veer: subprocess.Popen[bytes], veer_log: Path, what: str) -> float:
    """Poll until the gauge for ``label`` is ``want``; the monotonic time of the answer that
    said so (an upper bound: the flip happened since the previous poll)."""
    deadline = time.monotonic() + limit
    while True:
        if veer.poll() is not None:
            die(f"veer exited with {veer.returncode}:\n{tail(veer_log)}")
        seen = metrics.gauges().get(label)
        now = time.monotonic()
        if seen == want:
            return now
        if now >= deadline:
            die(f"{what}: veer_endpoint_healthy for {label} still {seen} after {limit:.0f}s")
        time.sleep(poll)


@dataclass
class Result:
    setting: str
    interval: float
    timeout: float
    healthy: int
    unhealthy: int
    down_s: list[float] = field(default_factory=list)  # kill -> gauge 0
    up_s: list[float] = field(default_factory=list)  # backend listening again -> gauge 1
    phase_s: list[float] = field(default_factory=list)  # random wait (0..interval) before a kill
    status_after_kill: dict[str, Any] | None = None
    transitions_logged: int = 0
    fetch_ms: list[float] = field(default_factory=list)


def run_setting(name: str, kills: int, poll: float, tmp: Path, veer_bin: str,
                deadline: float, rng: random.Random) -> Result:
    interval, timeout, healthy, unhealthy = SETTINGS[name]
    res = Result(name, interval, timeout, healthy, unhealthy)
    d = tmp / name
    d.mkdir()
    backends = {n: Backend(n, free_port(), d / f"backend-{n}.log") for n in ("original", "new")}
    veer: subprocess.Popen[bytes] | None = None
    metrics: Metrics | None = None
    try:
        for b in backends.values():
            b.start(deadline)
        port, admin = free_port(), free_port()
        conf = d / "veer.yaml"
        conf.write_text(VEER_CONF.format(
            port=port, admin=admin, original=backends["original"].port,
            new=backends["new"].port, interval=interval, timeout=timeout, healthy=healthy,
            unhealthy=unhealthy))
        veer_log = d / "veer.log"
        with veer_log.open("wb") as out:
            veer = subprocess.Popen([veer_bin, "run", "--config", str(conf)], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=d)
        while not (listening(port) and listening(admin)):
            if veer.poll() is not None:
                die(f"veer exited with {veer.returncode}:\n{tail(veer_log)}")
            if time.monotonic() > deadline:
                die(f"veer not listening on :{port} and :{admin}:\n{tail(veer_log)}")
            time.sleep(0.05)
        metrics = Metrics(admin)
        victim = backends["new"]
        # Down: (unhealthy - 1) intervals after the first failed probe, which comes up to one
        # interval after the kill; up: likewise with healthy. Plus slack for a busy machine.
        limit_down = interval * (unhealthy + 1) + timeout + 10
        limit_up = interval * (healthy + 1) + timeout + 10
        wait_gauge(metrics, victim.label, 1.0, poll, limit_up, veer, veer_log, "start")
        for k in range(kills):
            # A random point in the probe cycle, else every kill would land just after the
            # round that brought the endpoint back and always see the worst case.
            phase = rng.uniform(0, interval)
            time.sleep(phase)
            res.phase_s.append(round(phase, 4))
            killed = victim.kill()
            down = wait_gauge(metrics, victim.label, 0.0, poll, limit_down, veer, veer_log,
                              f"kill {k + 1}")
            res.down_s.append(round(down - killed, 4))
            if res.status_after_kill is None:
                res.status_after_kill = metrics.status_row(victim.label)
            victim.start(deadline)
            back = time.monotonic()
            up = wait_gauge(metrics, victim.label, 1.0, poll, limit_up, veer, veer_log,
                            f"restart {k + 1}")
            res.up_s.append(round(up - back, 4))
            print(f"{name:8} kill {k + 1}/{kills}: out of rotation after {down - killed:.3f} s "
                  f"(killed {phase:.2f} s after it was back), back {up - back:.3f} s after restart",
                  file=sys.stderr)
            if time.monotonic() > deadline:
                die("--max-seconds reached")
        res.transitions_logged = sum(
            1 for ln in veer_log.read_text(errors="replace").splitlines()
            if f"endpoint {victim.label} " in ln and (") down:" in ln or ") up:" in ln))
        res.fetch_ms = [round(v, 3) for v in metrics.fetch_ms]
        return res
    finally:
        if metrics is not None:
            metrics.close()
        stop(veer)
        for b in backends.values():
            stop(b.proc)


def q(values: list[float], fn: Any) -> str:
    return f"{fn(values):.3f}" if values else "-"


def report(args: argparse.Namespace, results: list[Result], wall: float) -> list[str]:
    lines = ["| setting | interval | timeout | unhealthy | healthy | kills | down median s "
             "| down min s | down max s | expected down s | up median s | up max s "
             "| expected up s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in results:
        # The first failed probe comes 0..interval after the kill; unhealthy - 1 more follow,
        # an interval apart. Coming back: healthy good probes, the first 0..interval after
        # the backend listens again.
        exp_down = f"{(r.unhealthy - 1) * r.interval:g}..{r.unhealthy * r.interval:g}"
        exp_up = f"{(r.healthy - 1) * r.interval:g}..{r.healthy * r.interval:g}"
        lines.append(
            f"| {r.setting} | {r.interval:g}s | {r.timeout:g}s | {r.unhealthy} | {r.healthy} "
            f"| {len(r.down_s)} | {q(r.down_s, statistics.median)} | {q(r.down_s, min)} "
            f"| {q(r.down_s, max)} | {exp_down} | {q(r.up_s, statistics.median)} "
            f"| {q(r.up_s, max)} | {exp_up} |")
    fetch = [v for r in results for v in r.fetch_ms]
    lines.append("")
    lines.append(f"/metrics polled every {1000 * args.poll:g} ms; one fetch took median "
                 f"{q(fetch, statistics.median)} ms, max {q(fetch, max)} ms ({len(fetch)} "
                 "fetches), so each time is late by at most one poll period plus one fetch.")
    for r in results:
        row = r.status_after_kill or {}
        lines.append(f"{r.setting}: /status after the first kill: healthy "
                     f"{row.get('healthy')}, active {json.dumps(row.get('active'))}; "
                     f"veer logged {r.transitions_logged} transition lines for the endpoint "
                     f"(expected {2 * len(r.down_s)})")
    lines.append("")
    lines.append(f"- date: `{dt.datetime.now().astimezone().isoformat(timespec='seconds')}`, "
                 f"python {platform.python_version()}, wall {wall:.0f} s")
    lines.append(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5, help="kills per setting (5)")
    ap.add_argument("--settings", default="default,fast",
                    help=f"comma-separated subset of {','.join(SETTINGS)}")
    ap.add_argument("--poll", type=float, default=0.01, help="seconds between /metrics polls")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random kill phases")
    ap.add_argument("--max-seconds", type=float, default=600,
                    help="give up (exit 2) after this long in all (600)")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    if not names or set(names) - set(SETTINGS):
        ap.error(f"--settings takes a subset of {','.join(SETTINGS)}")
    if args.kills < 1 or args.poll <= 0:
        ap.error("--kills must be at least 1 and --poll positive")
    veer = Path(sys.executable).with_name("veer")
    if not veer.exists():
        die("veer not found next to this Python; run with the project venv: "
            ".venv/bin/python bench/health.py")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="veer-health-"))
    try:
        results = [run_setting(n, args.kills, args.poll, tmp, str(veer), deadline, rng)
                   for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = report(args, results, time.monotonic() - t0)
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"command": shlex.join([sys.executable, *sys.argv]),
                                        "results": [r.__dict__ for r in results],
                                        "table": lines}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
