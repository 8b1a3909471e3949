"""Cluster and multi-worker benchmarks: weight propagation, failover, workers, merge cost.

Not part of the test suite. Needs ``redis-server``, ``nginx`` and ``wrk`` (Debian:
``apt-get install -y redis-server nginx-light wrk``) for the parts that start servers;
``merge`` runs in-process. Everything listens on 127.0.0.1. See bench/README.md.

    .venv/bin/python bench/cluster.py                        # all four parts, full counts
    .venv/bin/python bench/cluster.py --changes 20 --failovers 2 --duration 3 --reps 1
    .venv/bin/python bench/cluster.py --only propagation --only merge

Parts (``--only``, repeatable):

- propagation: Redis + 2 replicas with ``workers: N``; PUT /weights flips ``new`` 0 <-> 100
  and the time until every worker of every replica routes by the new weight is measured
  on keep-alive connections known to be owned by each worker.
- failover: Redis + 2 replicas (one process each) running a rollout; the lease holder is
  killed with SIGKILL and the time until another member holds the lease in Redis is
  measured; the killed replica is started again (same id) before the next round.
- workers: no cluster; ``workers: 1`` vs ``workers: 2`` under wrk, unpinned, with the CPU
  of veer (supervisor and workers), wrk, nginx and everything else on the machine.
- merge: the leader's cost of folding one replica-second of reports (JSON decode,
  ``Report.from_wire``, ``MergedTelemetry.ingest``), and how many replicas that allows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import resource
import select
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import redis

# bench/ is not a package: run as a script, bench/ is sys.path[0] and baseline.py imports.
from baseline import BODY, NGINX_CONF, WRK_LUA, cpu_model, free_port, parse_wrk

from proxy.config.units import parse_duration
from proxy.routing.variant import NEW, ORIGINAL, VARIANTS
from proxy.telemetry.merged import MergedTelemetry
from proxy.telemetry.recorder import Recorder
from proxy.telemetry.report import EndpointReading, Report, Reporter
from proxy.timing.clock import ManualClock

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TOKEN = "t"  # VEER_ADMIN_TOKEN of every replica started here
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTS = ("propagation", "failover", "workers", "merge")
NEEDS = {"propagation": ("redis-server", "nginx"), "failover": ("redis-server", "nginx"),
         "workers": ("nginx", "wrk"), "merge": ()}
INSTALL = {"redis-server": "redis-server", "nginx": "nginx-light", "wrk": "wrk"}

VEER_CONF = """listen: {host}:{port}
admin: {{listen: "{host}:{admin}"}}
workers: {workers}
upstreams:
  original: {{endpoints: ["http://{host}:{original}"]}}
  new: {{endpoints: ["http://{host}:{new}"]}}
routing: {{user_key: ["header:X-User-Id"]}}
timeouts: {{drain: 2s}}
"""
CLUSTER_CONF = """cluster: {{redis: "redis://{host}:{redis}/0", name: {name}, id: {id}, \
lease: {lease}}}
"""
# A canary phase far longer than any run: the rollout must sit in phase 0 throughout, so a
# phase change after a failover can only mean the new leader lost or mangled the state.
ROLLOUT_CONF = """rollout:
  name: bench
  tick: 250ms
  plan:
    - {name: canary, weight: 10, duration: 1h}
    - {name: full, weight: 100}
"""
PROBE_REQUEST = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-User-Id: bench-probe-user\r\n\r\n".encode()
PUT_TIMEOUT = 30.0  # seconds a PUT /weights may take to answer before the run stops
WARMUP_CHANGES = 2  # untimed flips first: the first save creates the key, connections warm up
GOALS = {"propagation_p99_ms": 200.0, "failover_s": 3.0}
# What a controller's failover waits for elsewhere (default lease durations), for context.
OTHERS_LEASE_S = {"Argo Rollouts": 15.0, "Flagger": 60.0}


def die(msg: str) -> NoReturn:
    print(f"cluster: {msg}", file=sys.stderr)
    raise SystemExit(2)


def note(msg: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(msg, file=sys.stderr, flush=True)


# --- numbers -------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with 200 changes p99 is the 2nd largest, not
    an interpolation between samples that never happened."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values) if values else math.nan,
            "p99": pct(values, 99), "max": max(values) if values else math.nan}


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # NaN: nothing measured


# --- /proc ---------------------------------------------------------------------------------

def cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of one process (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` over all its threads (a worker could be spawned from any)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    except OSError:
        return []
    return sorted(set(out))


def system_busy() -> float:
    """CPU seconds all cores spent not idle since boot (user, nice, system, irq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def server_inode(port: int, client_port: int) -> int | None:
    """The inode of veer's end of our connection: the /proc/net/tcp row whose local address
    is veer's port and whose remote port is our client's."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, remote = cols[1], cols[2]
        if (int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port
                and remote.split(":")[0] == "0100007F"):  # 127.0.0.1, little-endian hex
            inode = int(cols[9])
            return inode or None
    return None


def connections_by_worker(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections to ``port`` held by each of ``pids``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port and cols[3] == "01":  # ESTABLISHED
            inodes.add(f"socket:[{cols[9]}]")
    counts = dict.fromkeys(pids, 0)
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                counts[pid] += os.readlink(fd) in inodes
            except OSError:
                continue
    return counts


def owner_of(inode: int, pids: list[int]) -> int | None:
    """The process among ``pids`` holding socket ``inode`` open."""
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


# --- processes -----------------------------------------------------------------------------

class Processes:
    """Everything this script starts, so that every exit path stops it (by PID only)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C reaches only this script, which then stops the
        # servers in order instead of every process racing its own SIGINT handler.
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                    env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL; veer's workers left behind (their supervisor killed) too."""
        workers = [p for p in children(proc.pid) if is_veer_worker(p)]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in workers:  # children of our veer; normally gone with their supervisor
            deadline = time.monotonic() + 5
            while is_veer_worker(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if is_veer_worker(pid):
                os.kill(pid, signal.SIGKILL)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except (OSError, subprocess.SubprocessError) as exc:
                note(f"could not stop pid {proc.pid}: {exc}")


def is_veer_worker(pid: int) -> bool:
    try:
        return b"proxy.workers.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path,
              timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.02)
    die(f"{what} not listening on {HOST}:{port} after {timeout:.0f}s:\n{tail(log)}")


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> float:
    """Wait for ``check``; seconds it took. Dies (exit 2) naming ``what`` on timeout."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            die(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


@dataclass
class Backends:
    """One nginx (one process) answering 200 with 100 bytes on two ports."""

    original: int
    new: int
    proc: subprocess.Popen[bytes]


def start_nginx(procs: Processes, tmp: Path, binary: str) -> Backends:
    ports = {"original": free_port(), "new": free_port()}
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, body=BODY, **ports))
    proc = procs.start("nginx", [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c",
                                 str(tmp / "nginx.conf")], tmp / "nginx.out")
    for port in ports.values():
        wait_port(port, proc, "nginx", tmp / "error.log")
    return Backends(ports["original"], ports["new"], proc)


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    client: redis.Redis


def start_redis(procs: Processes, tmp: Path, binary: str) -> RedisServer:
    port = free_port()
    data = tmp / "redis"
    data.mkdir(exist_ok=True)
    # No persistence: nothing outlives the run, nothing is written outside the temp dir.
    proc = procs.start("redis-server", [binary, "--port", str(port), "--bind", HOST,
                                        "--save", "", "--appendonly", "no", "--dir", str(data)],
                       tmp / "redis.log")
    wait_port(port, proc, "redis-server", tmp / "redis.log")
    return RedisServer(port, proc, redis.Redis(host=HOST, port=port, socket_timeout=2.0))


@dataclass
class Veer:
    """One ``veer run`` process (a replica), started and stopped only through ``Processes``."""

    id: str
    tmp: Path
    backends: Backends
    workers: int = 1
    cluster: str | None = None  # cluster name; None: no cluster
    redis_port: int = 0
    rollout: bool = False
    weight: float = 0.0  # weights.new when there is no rollout
    lease: str = "2s"
    port: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    boot_s: float = 0.0  # seconds from /status counting every worker alive to each answering

    @property
    def config(self) -> Path:
        return self.tmp / f"veer-{self.id}.yaml"

    @property
    def log(self) -> Path:
        return self.tmp / f"veer-{self.id}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"veer {self.id} was never started"
        return self.proc.pid

    def write_config(self) -> None:
        text = VEER_CONF.format(host=HOST, port=self.port, admin=self.admin,
                                workers=self.workers, original=self.backends.original,
                                new=self.backends.new)
        if self.cluster is not None:
            text += CLUSTER_CONF.format(host=HOST, redis=self.redis_port, name=self.cluster,
                                        id=self.id, lease=self.lease)
        text += ROLLOUT_CONF if self.rollout else f"weights: {{new: {self.weight:g}}}\n"
        self.config.write_text(text)

    def start(self, procs: Processes) -> None:
        self.write_config()
        env = {**os.environ, "VEER_ADMIN_TOKEN": TOKEN}
        self.proc = procs.start(f"veer {self.id}", [sys.executable, "-m", "admin.cli", "run",
                                                   "--config", str(self.config)], self.log, env)
        wait_port(self.port, self.proc, f"veer {self.id}", self.log)
        wait_port(self.admin, self.proc, f"veer {self.id} admin", self.log)
        if self.workers > 1:
            # The supervisor binds the listener before its workers have imported veer
            # (seconds on a busy machine): the port accepts, connections only queue, and
            # /readyz already says ready. Ready here means every worker answered a request.
            until(lambda: len(self.worker_pids()) == self.workers
                  and status(self).get("workers", {}).get("alive") == self.workers,
                  20, f"veer {self.id}'s {self.workers} workers")
            t0 = time.monotonic()
            for conn in cover_workers(self, 1, timeout=30.0):
                conn.close()
            self.boot_s = time.monotonic() - t0

    def worker_pids(self) -> list[int]:
        """The processes that serve: the workers, or veer itself with ``workers: 1``."""
        if self.workers == 1:
            return [self.pid]
        return [p for p in children(self.pid) if is_veer_worker(p)]

    def all_pids(self) -> list[int]:
        return [self.pid, *(p for p in children(self.pid) if is_veer_worker(p))]

    def warnings(self) -> list[str]:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]


def status(v: Veer) -> dict[str, Any]:
    """GET /status (empty dict when it does not answer: the caller keeps polling)."""
    try:
        conn = Conn(v.admin, timeout=2.0)
        try:
            resp = conn.roundtrip(f"GET /status HTTP/1.1\r\nHost: {HOST}\r\n"
                                  "Connection: close\r\n\r\n".encode())
        finally:
            conn.close()
        if resp.status != 200:
            return {}
        body: dict[str, Any] = json.loads(resp.body)
        return body
    except (OSError, ValueError):
        return {}


# --- raw HTTP/1.1 --------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(buf: bytes) -> tuple[Response, bytes] | None:
    """One whole response off the front of ``buf`` and the rest, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if code in (204, 304) or 100 <= code < 200:
        return Response(code, headers, b""), buf[start:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, pos = b"", start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            if size == 0:  # last chunk; no trailers expected, so "0\r\n\r\n"
                if len(buf) < eol + 4:
                    return None
                return Response(code, headers, body), buf[eol + 4:]
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    length = int(headers.get("content-length", "0"))
    if len(buf) < start + length:
        return None
    return Response(code, headers, buf[start:start + length]), buf[start + length:]


class Conn:
    """One keep-alive HTTP/1.1 connection driven by hand: a raw socket, so that we know its
    local port (and hence which worker owns its other end) and control every byte sent."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port: int = self.sock.getsockname()[1]
        self.buf = b""
        self.owner: int | None = None  # the worker PID serving it, once known
        self.replica = ""

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def feed(self) -> None:
        """Read what has arrived (call when readable); ConnectionError on EOF."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by peer")
        self.buf += data

    def take(self) -> Response | None:
        got = parse_response(self.buf)
        if got is None:
            return None
        resp, self.buf = got
        return resp

    def roundtrip(self, raw: bytes) -> Response:
        self.send(raw)
        while (resp := self.take()) is None:
            self.feed()
        return resp

    def closed_by_peer(self) -> bool:
        """True if the peer has closed (readable with nothing to read while idle)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def put_weights_request(new: float) -> bytes:
    body = json.dumps({"new": new}).encode()
    return (f"PUT /weights HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


# --- part 1: weight-change propagation -----------------------------------------------------

def cover_workers(replica: Veer, per_worker: int, max_connections: int = 256,
                  timeout: float = 5.0) -> list[Conn]:
    """Keep-alive connections to ``replica`` until each worker owns ``per_worker`` of them.

    Which worker accepts a connection is the kernel's choice (every worker polls the one
    shared listener), so connections are opened in batches and kept open while
    searching: a closed one would let the same idle worker win again.
    """
    pids = replica.worker_pids()
    owned: dict[int, list[Conn]] = {p: [] for p in pids}
    extra: list[Conn] = []
    opened = 0
    while any(len(c) < per_worker for c in owned.values()):
        if opened >= max_connections:
            die(f"veer {replica.id}: {max_connections} connections did not reach every "
                f"worker: {', '.join(f'{p}: {len(c)}' for p, c in owned.items())}")
        batch = [Conn(replica.port, timeout) for _ in range(8)]
        opened += len(batch)
        for c in batch:  # all sent before any is read: the workers compete for each accept
            c.send(PROBE_REQUEST)
        for c in batch:
            while c.take() is None:
                c.feed()
            inode = server_inode(replica.port, c.local_port)
            c.owner = None if inode is None else owner_of(inode, pids)
            c.replica = replica.id
            if c.owner in owned and len(owned[c.owner]) < per_worker:
                owned[c.owner].append(c)
            else:
                extra.append(c)
    for c in extra:
        c.close()
    return [c for conns in owned.values() for c in conns]


def propagate_once(admin: Conn, probes: list[Conn], new: float, expected: str,
                   timeout: float) -> dict[str, Any]:
    """Send one PUT and poll every probe back to back until each answers ``expected``.

    Everything runs in one select loop, so probing starts the moment the PUT is written
    (not once its response is back): a remote worker can flip before the PUT returns.
    Each connection's time is when its first response with the new variant was read.
    """
    sel = selectors.DefaultSelector()
    sel.register(admin.sock, selectors.EVENT_READ, admin)
    for p in probes:
        sel.register(p.sock, selectors.EVENT_READ, p)
    request = put_weights_request(new)
    flipped: dict[int, float] = {}
    stale = dict.fromkeys(range(len(probes)), 0)  # responses still on the old variant
    errors = 0
    put_s: float | None = None
    put_status = 0
    index = {id(p): i for i, p in enumerate(probes)}
    t0 = time.perf_counter()
    admin.send(request)
    for p in probes:
        p.send(PROBE_REQUEST)
    try:
        while put_s is None or len(flipped) < len(probes):
            # The PUT's answer is awaited longer than the flips: a slow PUT is a result,
            # a missing one a failure.
            limit = timeout if put_s is not None else max(timeout, PUT_TIMEOUT)
            left = limit - (time.perf_counter() - t0)
            if left <= 0:
                break
            for key, _ in sel.select(left):
                conn: Conn = key.data
                conn.feed()
                while (resp := conn.take()) is not None:
                    now = time.perf_counter() - t0
                    if conn is admin:
                        put_s, put_status = now, resp.status
                        continue
                    i = index[id(conn)]
                    if resp.headers.get("x-veer-variant") == expected:
                        flipped.setdefault(i, now)
                    else:
                        if resp.status != 200:
                            errors += 1
                        stale[i] += 1
                        conn.send(PROBE_REQUEST)
    finally:
        sel.close()
    return {"put_s": put_s, "put_status": put_status, "flipped_s": flipped, "stale": stale,
            "errors": errors}


def run_propagation(args: argparse.Namespace, procs: Processes, tmp: Path, tools: dict[str, str],
                    backends: Backends) -> dict[str, Any]:
    rs = start_redis(procs, tmp, tools["redis-server"])
    name = "bench-propagation"
    replicas = [Veer(rid, tmp, backends, workers=args.workers, cluster=name,
                     redis_port=rs.port, weight=0) for rid in ("a", "b")]
    for r in replicas:
        r.start(procs)
    members_key = f"veer:{name}:members"
    until(lambda: len(rs.client.hgetall(members_key)) == 2, 20, "both replicas as members")
    note(f"propagation: 2 replicas x {args.workers} workers; covering every worker")
    boot = {r.id: round(r.boot_s, 3) for r in replicas}
    probes = [c for r in replicas for c in cover_workers(r, args.probes_per_worker)]
    for p in probes:
        note(f"  probe :{p.local_port} -> veer {p.replica} worker pid {p.owner}")
    before = {r.id: r.worker_pids() for r in replicas}
    admins = {r.id: Conn(r.admin) for r in replicas}
    rng = random.Random(20240601)
    rows: list[dict[str, Any]] = []
    timeouts = 0
    total = WARMUP_CHANGES + args.changes
    try:
        for i in range(total):
            new = 100.0 if i % 2 == 0 else 0.0
            expected = NEW if new else ORIGINAL
            receiver = replicas[i % 2] if args.put_to == "alternate" else replicas[0]
            admin = admins[receiver.id]
            if admin.closed_by_peer():  # aiohttp closes idle keep-alives after a while
                admin.close()
                admin = admins[receiver.id] = Conn(receiver.admin)
            # A random pause between changes, so changes do not fall at a fixed point of
            # the replicas' 0.25 s report ticks or 0.5 s state polls.
            time.sleep(rng.uniform(0.02, 0.12))
            got = propagate_once(admin, probes, new, expected, args.change_timeout)
            if got["put_s"] is None or got["put_status"] != 200:
                die(f"PUT /weights on veer {receiver.id} answered "
                    f"{got['put_status'] or 'nothing'} within {args.change_timeout}s:\n"
                    f"{tail(receiver.log)}")
            flipped: dict[int, float] = got["flipped_s"]
            if len(flipped) < len(probes):
                timeouts += i >= WARMUP_CHANGES
                late = [p for j, p in enumerate(probes) if j not in flipped]
                note(f"change {i}: {len(late)} workers not on {expected} after "
                     f"{args.change_timeout}s: {[(p.replica, p.owner) for p in late]}")
                # Let them settle before the next flip, or the next change would see
                # them "flip" at once (they would already be on its variant). Each late
                # probe has one request in flight: its answer is read first, or it would
                # be taken for an answer to the next change's probing.
                deadline = time.monotonic() + 30
                for p in late:
                    while p.take() is None:
                        p.feed()
                    while p.roundtrip(PROBE_REQUEST).headers.get("x-veer-variant") != expected:
                        if time.monotonic() > deadline:
                            die(f"worker {p.owner} of veer {p.replica} never took weight {new}")
                        time.sleep(0.01)
            local = [t for j, t in flipped.items() if probes[j].replica == receiver.id]
            remote = [t for j, t in flipped.items() if probes[j].replica != receiver.id]
            row = {"change": i, "new": new, "receiver": receiver.id,
                   "put_ms": 1000 * got["put_s"],
                   # A timed-out change counts as the timeout: a lower bound, kept in the
                   # percentiles rather than dropped from them.
                   "all_ms": 1000 * max(flipped.values()) if len(flipped) == len(probes)
                   else 1000 * args.change_timeout,
                   "timed_out": len(flipped) < len(probes),
                   "receiver_ms": 1000 * max(local) if local else math.nan,
                   "other_ms": 1000 * max(remote) if remote else math.nan,
                   "per_worker_ms": {f"{probes[j].replica}/{probes[j].owner}": round(1000 * t, 3)
                                     for j, t in sorted(flipped.items())},
                   "stale_responses": sum(got["stale"].values()), "errors": got["errors"]}
            if i >= WARMUP_CHANGES:
                rows.append(row)
            if (i + 1) % max(1, total // 10) == 0 or i == total - 1:
                note(f"  change {i + 1}/{total}: all {fmt(row['all_ms'])} ms, PUT "
                     f"{fmt(row['put_ms'])} ms")
    finally:
        for c in [*probes, *admins.values()]:
            c.close()
    after = {r.id: r.worker_pids() for r in replicas}
    restarted = before != after
    if restarted:
        note(f"propagation: worker PIDs changed during the run: {before} -> {after}")
    warnings = {r.id: r.warnings() for r in replicas}
    for r in replicas:
        if r.proc is not None:
            procs.stop(r.proc)
    procs.stop(rs.proc)
    out = {
        "workers_per_replica": args.workers, "probes": len(probes), "put_to": args.put_to,
        "worker_boot_s": boot,
        "changes": len(rows), "warmup_changes": WARMUP_CHANGES, "timeouts": timeouts,
        "change_timeout_s": args.change_timeout, "workers_restarted": restarted,
        "all_ms": summary([r["all_ms"] for r in rows]),
        "receiver_ms": summary([r["receiver_ms"] for r in rows
                                if r["receiver_ms"] == r["receiver_ms"]]),  # NaN: none flipped
        "other_ms": summary([r["other_ms"] for r in rows if r["other_ms"] == r["other_ms"]]),
        "put_ms": summary([r["put_ms"] for r in rows]),
        "stale_responses": sum(r["stale_responses"] for r in rows),
        "probe_errors": sum(r["errors"] for r in rows),
        "veer_log_warnings": {k: v[:20] for k, v in warnings.items()}, "rows": rows,
    }
    print_propagation(out)
    return out


def print_propagation(p: dict[str, Any]) -> None:
    goal = GOALS["propagation_p99_ms"]
    print(f"\n## Weight-change propagation (2 replicas x {p['workers_per_replica']} workers, "
          f"{p['probes']} probed connections, PUT to {p['put_to']})\n")
    print("| from just before the PUT until ... | changes | median ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    labels = {"all_ms": "every worker of both replicas routes by the new weight",
              "receiver_ms": "every worker of the replica that got the PUT",
              "other_ms": "every worker of the other replica (via Redis)",
              "put_ms": "the PUT's response is read (its round trip)"}
    for key, label in labels.items():
        s = p[key]
        print(f"| {label} | {s['n']} | {fmt(s['median'])} | {fmt(s['p99'])} | "
              f"{fmt(s['max'])} |")
    p99 = p["all_ms"]["p99"]
    # Timed-out changes enter the percentiles at the timeout, a lower bound: with more than
    # 1% of them the p99 is not a measurement any more.
    ok = p99 == p99 and p99 <= goal and p["timeouts"] <= p["changes"] // 100
    verdict = "met" if ok else "NOT met"
    print(f"\nGoal p99 <= {goal:.0f} ms: {verdict}. Changes that timed out: {p['timeouts']} "
          f"(each counted as {p['change_timeout_s']} s above). Responses still on the old variant "
          f"while polling: {p['stale_responses']}; probe errors: {p['probe_errors']}. "
          f"Worker restarts during the run: {'yes' if p['workers_restarted'] else 'no'}.")


# --- part 2: failover ----------------------------------------------------------------------

def lease_holder(client: redis.Redis, key: str) -> tuple[str, int] | None:
    raw = client.get(key)
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    member, _, epoch = text.rpartition(" ")
    return member, int(epoch)


def fresh_member(client: redis.Redis, key: str, replica: Veer, within: float = 2.0) -> bool:
    """``replica``'s current process has reported to the members hash within ``within`` s."""
    raw = client.hget(key, replica.id)
    if raw is None:
        return False
    entry = json.loads(raw)
    return bool(entry.get("pid") == replica.pid
                and time.time() - float(entry["last_report"]) <= within)


def says_it_leads(v: Veer) -> bool:
    return bool(status(v).get("cluster", {}).get("leader") == v.id)


def phase_of(v: Veer) -> dict[str, Any] | None:
    ro = status(v).get("rollout")
    if not ro:
        return None
    return {"index": ro["phase"]["index"], "name": ro["phase"]["name"], "status": ro["status"]}


def run_failover(args: argparse.Namespace, procs: Processes, tmp: Path, tools: dict[str, str],
                 backends: Backends) -> dict[str, Any]:
    rs = start_redis(procs, tmp, tools["redis-server"])
    name = "bench-failover"
    lease_key, members_key = f"veer:{name}:lease", f"veer:{name}:members"
    replicas = {rid: Veer(rid, tmp, backends, workers=1, cluster=name, redis_port=rs.port,
                          rollout=True, lease=args.lease) for rid in ("fa", "fb")}
    for r in replicas.values():
        r.start(procs)
    rng = random.Random(7)
    rounds: list[dict[str, Any]] = []

    def both_members() -> bool:
        return all(fresh_member(rs.client, members_key, r) for r in replicas.values())

    until(both_members, 20, "both failover replicas as members")
    until(lambda: lease_holder(rs.client, lease_key) is not None, 20, "a lease holder")
    for n in range(args.failovers):
        held = lease_holder(rs.client, lease_key)
        assert held is not None
        leader = replicas[held[0]]
        survivor = next(r for r in replicas.values() if r is not leader)
        phase_before = phase_of(leader)
        # Kill at a random point of the holder's renewal cycle (every lease/4), not at a
        # fixed offset after it renewed: the lease's remaining time decides the failover.
        time.sleep(rng.uniform(0, parse_duration(args.lease) / 4))
        pttl_ms = int(rs.client.pttl(lease_key))
        t_kill = time.perf_counter()
        os.kill(leader.pid, signal.SIGKILL)  # our own replica's process, by PID
        new_holder: tuple[str, int] | None = None
        polls = 0
        while time.perf_counter() - t_kill < 60:
            got = lease_holder(rs.client, lease_key)
            polls += 1
            if got is not None and got[0] != leader.id:
                new_holder = got
                break
            time.sleep(0.005)
        failover_s = time.perf_counter() - t_kill
        assert leader.proc is not None
        leader.proc.wait(timeout=10)
        if new_holder is None:
            die(f"failover {n}: no member took the lease within 60 s:\n{tail(survivor.log)}")
        # The new leader's own view: /status says it leads (its lease task ran), then the
        # phase it shows once its controller ran a couple of ticks under the lease.
        t_status = until(partial(says_it_leads, survivor), 30,
                         f"veer {survivor.id} to report itself leader", interval=0.01)
        time.sleep(0.6)  # two controller ticks plus the /status cache (0.25 s)
        phase_after = phase_of(survivor)
        row = {"round": n, "killed": leader.id, "new_leader": new_holder[0],
               "epoch_before": held[1], "epoch_after": new_holder[1],
               "lease_pttl_at_kill_ms": pttl_ms, "failover_s": failover_s,
               "status_leader_s": failover_s + t_status, "lease_polls": polls,
               "phase_before": phase_before, "phase_after": phase_after,
               "phase_unchanged": phase_before is not None and phase_before == phase_after}
        rounds.append(row)
        note(f"failover {n + 1}/{args.failovers}: killed {leader.id} (lease {pttl_ms} ms "
             f"left), {new_holder[0]} took it after {failover_s:.3f} s (epoch {held[1]} -> "
             f"{new_holder[1]}), phase {phase_before} -> {phase_after}")
        # Same id again, so the next round's leader has a follower to fail over to.
        procs.procs = [(nm, p) for nm, p in procs.procs if p is not leader.proc]
        leader.start(procs)
        until(both_members, 30, f"veer {leader.id} back as a member")
    warnings = {r.id: r.warnings() for r in replicas.values()}
    for r in replicas.values():
        if r.proc is not None:
            procs.stop(r.proc)
    procs.stop(rs.proc)
    out = {"lease": args.lease, "failovers": len(rounds),
           "failover_s": summary([r["failover_s"] for r in rounds]),
           "status_leader_s": summary([r["status_leader_s"] for r in rounds]),
           "lease_pttl_at_kill_ms": summary([float(r["lease_pttl_at_kill_ms"]) for r in rounds]),
           "phase_unchanged": sum(r["phase_unchanged"] for r in rounds),
           "veer_log_warnings": {k: v[:20] for k, v in warnings.items()}, "rounds": rounds}
    print_failover(out)
    return out


def print_failover(f: dict[str, Any]) -> None:
    goal = GOALS["failover_s"]
    print(f"\n## Failover (2 replicas, rollout ticking every 0.25 s, lease {f['lease']}, "
          f"leader killed with SIGKILL)\n")
    print("| measure | rounds | median s | max s |")
    print("|---|---:|---:|---:|")
    rows = {"kill -> another member holds the lease in Redis": f["failover_s"],
            "kill -> the new leader's /status says it leads": f["status_leader_s"]}
    for label, s in rows.items():
        print(f"| {label} | {s['n']} | {fmt(s['median'], 3)} | {fmt(s['max'], 3)} |")
    p = f["lease_pttl_at_kill_ms"]
    print(f"| lease time left when killed (PTTL) | {p['n']} | {fmt(p['median'] / 1000, 3)} | "
          f"{fmt(p['max'] / 1000, 3)} |")
    worst = f["failover_s"]["max"]
    verdict = "met" if worst == worst and worst <= goal else "NOT met"
    others = ", ".join(f"{k}'s default lease {v:.0f} s" for k, v in OTHERS_LEASE_S.items())
    print(f"\nGoal max <= {goal:.0f} s: {verdict} (for comparison: {others}). Rollout phase "
          f"unchanged across the failover: {f['phase_unchanged']}/{f['failovers']}.")


# --- part 3: workers: 1 vs workers: 2 ------------------------------------------------------

def snapshot(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: cpu_of(pid) for name, pid in pids.items()}


def run_workers(args: argparse.Namespace, procs: Processes, tmp: Path, tools: dict[str, str],
                backends: Backends) -> dict[str, Any]:
    lua = tmp / "req.lua"
    lua.write_text(WRK_LUA)
    wrk = [tools["wrk"], "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
           "-s", str(lua)]
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for rep in range(args.reps):
        # ABBA order: a slow drift of a shared machine lands on both counts alike.
        for count in ((1, 2) if rep % 2 == 0 else (2, 1)):
            v = Veer(f"w{count}", tmp, backends, workers=count, weight=10)
            v.start(procs)
            url = f"http://{HOST}:{v.port}/"
            if args.warmup:  # untimed: connections, pools and caches warm up
                subprocess.run([*wrk[:3], f"-d{args.warmup}s", *wrk[4:], url],
                               capture_output=True, check=False, timeout=args.warmup + 30)
            pids = {"supervisor" if count > 1 else "veer": v.pid,
                    **{f"worker{i}": p for i, p in enumerate(v.worker_pids()) if count > 1},
                    "nginx": backends.proc.pid}
            cpu0, sys0, wall0 = snapshot(pids), system_busy(), time.monotonic()
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            load = subprocess.Popen([*wrk, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            # Halfway through, who holds wrk's connections: they are kept alive for the
            # whole run, so this split is the split of the work between the workers.
            time.sleep(args.duration / 2)
            spread = connections_by_worker(v.port, v.worker_pids())
            stdout, stderr = load.communicate(timeout=args.duration + 60)
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu1, sys1, wall = snapshot(pids), system_busy(), time.monotonic() - wall0
            if load.returncode != 0:
                die(f"wrk failed ({load.returncode}): {stderr or stdout}")
            run = parse_wrk(stdout)
            run["connections_by_worker"] = list(spread.values())
            # Only wrk is reaped in between, so the children's rusage delta is wrk's CPU.
            wrk_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
            used = {k: (cpu1[k] or 0.0) - (cpu0[k] or 0.0) for k in pids}
            veer_cpu = sum(c for k, c in used.items() if k != "nginx")
            busy = sys1 - sys0
            run.update({
                "workers": count, "rep": rep, "wall_s": wall, "worker_boot_s": v.boot_s,
                "veer_cpu_s": veer_cpu, "cpu_us_per_req": veer_cpu * 1e6 / max(1, run["requests"]),
                "cores": {"veer": veer_cpu / wall, "wrk": wrk_cpu / wall,
                          "nginx": used["nginx"] / wall,
                          "other": max(0.0, busy - veer_cpu - wrk_cpu - used["nginx"]) / wall,
                          "machine": busy / wall},
                "veer_split": {k: round(c / veer_cpu, 3) if veer_cpu else 0.0
                               for k, c in used.items() if k != "nginx"},
                "gone": [k for k in pids if cpu1[k] is None],  # a worker restarted mid-run
            })
            runs[count].append(run)
            warnings = v.warnings()
            assert v.proc is not None
            procs.stop(v.proc)
            run["veer_log_warnings"] = warnings[:10]
            note(f"rep {rep + 1}/{args.reps} workers={count}: {run['rps']:.0f} req/s, "
                 f"{run['cpu_us_per_req']:.1f} us/req, cores veer {run['cores']['veer']:.2f} "
                 f"wrk {run['cores']['wrk']:.2f} nginx {run['cores']['nginx']:.2f} other "
                 f"{run['cores']['other']:.2f}, connections per process "
                 f"{run['connections_by_worker']}, CPU split {run['veer_split']}"
                 + "".join(f" [{p}]" for p in run["problems"]))
    med: dict[int, dict[str, float]] = {}
    for count, rs in runs.items():
        med[count] = {k: statistics.median(r[k] for r in rs)
                      for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
        for who in ("veer", "wrk", "nginx", "other", "machine"):
            med[count][f"cores_{who}"] = statistics.median(r["cores"][who] for r in rs)
    out = {"connections": args.connections, "duration_s": args.duration, "reps": args.reps,
           "pinned": False, "cpus": len(os.sched_getaffinity(0)),
           "wrk_command": shlex.join([*wrk[:-1], "$TMP/req.lua"]) + " http://127.0.0.1:PORT/",
           "median": {str(k): v for k, v in med.items()},
           "runs": {str(k): v for k, v in runs.items()}}
    print_workers(out)
    return out


def print_workers(w: dict[str, Any]) -> None:
    print(f"\n## workers: 1 vs workers: 2 (no cluster, wrk -t1 -c{w['connections']} "
          f"-d{w['duration_s']}s, medians of {w['reps']} reps)\n")
    print(f"Not pinned: veer, wrk and nginx share the same {w['cpus']} cores. \"cores\" = CPU "
          "seconds / wall seconds; \"other\" = whatever else ran on the machine meanwhile.\n")
    print("| workers | req/s | p50 ms | p99 ms | veer CPU us/req | cores veer | cores wrk "
          "| cores nginx | cores other | cores machine | wrk connections per serving "
          "process, each run | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for count, m in w["median"].items():
        rs = w["runs"][count]
        spread = "; ".join("/".join(map(str, r["connections_by_worker"])) for r in rs)
        problems = sorted({p for r in rs for p in r["problems"]} |
                          {f"{g} gone (restarted?)" for r in rs for g in r["gone"]}) or ["none"]
        print(f"| {count} | {m['rps']:.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | "
              f"{m['cpu_us_per_req']:.1f} | {m['cores_veer']:.2f} | {m['cores_wrk']:.2f} | "
              f"{m['cores_nginx']:.2f} | {m['cores_other']:.2f} | {m['cores_machine']:.2f} | "
              f"{spread} | {'; '.join(problems)} |")
    one, two = w["median"].get("1"), w["median"].get("2")
    if one and two:
        print(f"\nworkers: 2 / workers: 1: req/s x{two['rps'] / one['rps']:.3f}, CPU per "
              f"request x{two['cpu_us_per_req'] / one['cpu_us_per_req']:.3f}.")


# --- part 4: merge cost --------------------------------------------------------------------

REPORTS_PER_SECOND = 5  # 4 counter-only reports + the 1 carrying the 2 closed slots
# Lognormal latencies (microseconds): median and sigma per variant.
LATENCY = {ORIGINAL: (20_000.0, 0.6), NEW: (22_000.0, 0.7)}


def replica_seconds(seconds: int, rate: int, seed: int) -> list[list[str]]:
    """``seconds`` replica-seconds of one reporter's reports, as JSON text (as they travel
    on the stream): per second 4 counter-only reports, then 1 with the closed slots."""
    clock = ManualClock()
    recorder = Recorder()
    reporter = Reporter(f"bench/{os.getpid()}/{clock.wall():.3f}", recorder, clock)
    endpoints = [EndpointReading(ORIGINAL, "127.0.0.1:8001", True, 40),
                 EndpointReading(NEW, "127.0.0.1:8002", True, 8)]
    rng = random.Random(seed)
    mus = {v: (math.log(m), s) for v, (m, s) in LATENCY.items()}
    step = 1.0 / REPORTS_PER_SECOND
    per_step = rate // REPORTS_PER_SECOND
    out: list[list[str]] = []
    for _ in range(seconds):
        texts = []
        for _ in range(REPORTS_PER_SECOND):
            for v in VARIANTS:
                vr = recorder.variants[v]
                mu, sigma = mus[v]
                for k in range(per_step):  # spread over the step, as requests would be
                    now = clock.monotonic() + step * k / per_step
                    status = 500 if rng.random() < 0.001 else 200
                    vr.record(status, int(rng.lognormvariate(mu, sigma)), False, now)
            clock.advance(step)
            report = reporter.report(endpoints)
            reporter.delivered()
            texts.append(json.dumps(report.to_wire()))
        out.append(texts)
    return out


def run_merge(args: argparse.Namespace) -> dict[str, Any]:
    warm = 5  # the first seconds pay for lazily built HDR tables and a growing ring
    seconds = args.merge_seconds + warm
    note(f"merge: recording {seconds} s x {args.merge_rate} req/s per variant ...")
    data = replica_seconds(seconds, args.merge_rate, 11)
    shapes = [sum(1 for t in texts if '"slots": []' not in t) for texts in data[warm:]]
    view = MergedTelemetry(ManualClock(), window=60)
    # The leader with latency gates counts exceedances per slot (p99 and p999 limits).
    view.watch_latency(0.2, 0.5)
    group_us: list[float] = []
    counters_us: list[float] = []
    slots_us: list[float] = []
    gc.collect()
    for n, texts in enumerate(data):
        total = 0.0
        for text in texts:
            t0 = time.perf_counter_ns()
            view.ingest(Report.from_wire(json.loads(text)))
            took = (time.perf_counter_ns() - t0) / 1000
            total += took
            if n >= warm:
                (counters_us if '"slots": []' in text else slots_us).append(took)
        if n >= warm:
            group_us.append(total)
    med = statistics.median(group_us)
    mean = statistics.fmean(group_us)
    wire = [sum(len(t) for t in texts) for texts in data[warm:]]
    out = {"rate_per_variant": args.merge_rate, "replica_seconds": len(group_us),
           "reports_per_replica_second": REPORTS_PER_SECOND,
           "slot_reports_per_replica_second": statistics.median(shapes),
           "replica_second_us": {"median": med, "mean": mean, "p90": pct(group_us, 90),
                                 "max": max(group_us)},
           "counter_report_us": statistics.median(counters_us),
           "slot_report_us": statistics.median(slots_us),
           "wire_bytes_per_replica_second": statistics.median(wire),
           "replicas_at_10pct_core": 0.10 * 1e6 / med,
           "replicas_at_50pct_core": 0.50 * 1e6 / med,
           # A CPU budget is spent by the average, spikes (allocation, gc) included.
           "replicas_at_10pct_core_by_mean": 0.10 * 1e6 / mean,
           "replicas_at_50pct_core_by_mean": 0.50 * 1e6 / mean,
           "requests_merged_original": view.totals(ORIGINAL).requests}
    print_merge(out)
    return out


def print_merge(m: dict[str, Any]) -> None:
    rs = m["replica_second_us"]
    print(f"\n## Merge cost (in-process; {m['rate_per_variant']} req/s per variant, "
          f"{m['replica_seconds']} replica-seconds)\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| one replica-second: json.loads + Report.from_wire + MergedTelemetry.ingest of "
          f"4 counter-only reports + 1 with 2 slots, median | {rs['median']:.1f} us |")
    print(f"| the same, mean / p90 / max | {rs['mean']:.1f} / {rs['p90']:.1f} / "
          f"{rs['max']:.1f} us |")
    print(f"| one counter-only report, median | {m['counter_report_us']:.1f} us |")
    print(f"| one report with the 2 closed slots, median | {m['slot_report_us']:.1f} us |")
    print(f"| JSON on the stream per replica-second | {m['wire_bytes_per_replica_second']:.0f} "
          "bytes |")
    print(f"| replicas one leader can fold at 4 ticks/s within 10% of one core | "
          f"{m['replicas_at_10pct_core']:.0f} (by the mean: "
          f"{m['replicas_at_10pct_core_by_mean']:.0f}) |")
    print(f"| ... within 50% of one core (on paper) | {m['replicas_at_50pct_core']:.0f} "
          f"(by the mean: {m['replicas_at_50pct_core_by_mean']:.0f}) |")
    print("\nOn paper: leaves out reading the stream (XREAD and redis-py's parsing), the "
          "controller's own tick and the GIL shared with the data plane. A replica with "
          "workers: N sends N reporters' reports: count it N times.")


# --- main ----------------------------------------------------------------------------------

def git_head() -> str:
    """The checkout's commit, for the record ("unknown" without git)."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def find_tools(parts: list[str]) -> dict[str, str]:
    """Absolute paths of the binaries the chosen parts need; exit 2 naming them if not."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    needed = sorted({t for p in parts for t in NEEDS[p]})
    found = {t: shutil.which(t, path=path) for t in needed}
    missing = [t for t, p in found.items() if p is None]
    if missing:
        die(f"missing {', '.join(missing)} (needed by "
            f"{', '.join(p for p in parts if set(NEEDS[p]) & set(missing))}); install with: "
            f"sudo apt-get install -y {' '.join(INSTALL[t] for t in missing)}")
    return {t: p for t, p in found.items() if p is not None}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", action="append", choices=PARTS,
                    help="run only this part (repeatable); default: all")
    ap.add_argument("--changes", type=int, default=200, help="weight changes timed")
    ap.add_argument("--workers", type=int, default=2,
                    help="workers per replica in the propagation part")
    ap.add_argument("--put-to", choices=("a", "alternate"), default="a",
                    help="the replica receiving each PUT: always a, or a and b in turn")
    ap.add_argument("--probes-per-worker", type=int, default=1,
                    help="probed connections owned by each worker")
    ap.add_argument("--change-timeout", type=float, default=5.0,
                    help="seconds a change may take before it counts as timed out")
    ap.add_argument("--failovers", type=int, default=10, help="leader kills")
    ap.add_argument("--lease", default="2s", help="cluster lease in the failover part")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--reps", type=int, default=3, help="wrk runs per worker count")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--warmup", type=int, default=1, help="untimed wrk seconds before each run")
    ap.add_argument("--merge-seconds", type=int, default=400, help="replica-seconds timed")
    ap.add_argument("--merge-rate", type=int, default=1000,
                    help="requests/s per variant in the merged reports")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default bench/results/cluster-<date>.json)")
    args = ap.parse_args()
    if min(args.changes, args.failovers, args.duration, args.reps, args.connections,
           args.merge_seconds, args.probes_per_worker) < 1 or args.workers < 1:
        ap.error("counts and durations must be at least 1")
    try:
        if parse_duration(args.lease) <= 0:
            raise ValueError
    except ValueError:
        ap.error(f"--lease {args.lease!r}: a duration such as 2s or 1500ms")
    if args.merge_rate < REPORTS_PER_SECOND:
        ap.error(f"--merge-rate must be at least {REPORTS_PER_SECOND}")
    return args


def main() -> int:
    args = parse_args()
    parts = [p for p in PARTS if p in (args.only or PARTS)]
    tools = find_tools(parts)
    # SIGTERM runs the finally below like Ctrl-C does. SIGINT is set explicitly: started in
    # the background by a shell, Python inherits it ignored and Ctrl-C would do nothing.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    now = dt.datetime.now().astimezone()
    out_path: Path = args.out or REPO / "bench" / "results" / f"cluster-{now:%Y-%m-%d-%H%M%S}.json"
    info: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"), "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)), "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(), "platform": platform.platform(),
        "command": shlex.join([sys.executable, *sys.argv]), "parts": parts,
        "git": git_head(),
    }
    results: dict[str, Any] = {}
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="veer-cluster-bench-"))
    try:
        backends = start_nginx(procs, tmp, tools["nginx"]) if set(parts) - {"merge"} else None
        for part in parts:
            t0 = time.monotonic()
            if part == "merge":
                results[part] = run_merge(args)
            else:
                assert backends is not None
                run = {"propagation": run_propagation, "failover": run_failover,
                       "workers": run_workers}[part]
                results[part] = run(args, procs, tmp, tools, backends)
            results[part]["wall_s"] = round(time.monotonic() - t0, 1)
    except KeyboardInterrupt:
        note("interrupted; stopping everything started")
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if results:
            info["loadavg_at_end"] = os.getloadavg()
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps({**info, **results}, indent=2, default=str) + "\n")
            print(f"\n- date: `{info['date']}`; cpu: `{info['cpu']}` x{info['cpus']}; python "
                  f"{info['python']}; git {info['git']}; load average at start "
                  f"{', '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}")
            print(f"- command: `{info['command']}`")
            print(f"- results: `{out_path}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
