"""veer's multi-worker mode as real processes: with ``workers: N``, ``veer run`` is a
supervisor (admin API, rollout, the one listener) and N worker processes serve on it.

Checked here: both workers take connections and /status and /metrics add them up exactly;
a worker killed with SIGKILL is replaced (event, metric, its counts kept) while the other
keeps serving every new connection; PUT /weights and SIGHUP reach every worker, a refused
reload changes nothing; SIGTERM drains every worker; ``workers: auto`` is one per CPU.
And the edges of the same promises: a worker killed with messages still unread in its
socket is replaced too; a worker started after a refused reload, or reloading late, runs
the config the supervisor runs; after SIGTERM new connections are refused at once.

Which worker served a request is read off the kernel, not guessed: while the client keeps
its connection open, exactly one worker process holds the server end, and psutil lists
each process's sockets. Workers are the supervisor's children (psutil ``children()``);
the tests end only processes they started, by PID (psutil refuses a reused PID).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deadline import until, until_sync
from tests.ports import accepts
from tests.reliability.processes import (
    BACKEND_SCRIPT,
    HOST,
    ROOT,
    Backends,
    free_port,
    run_backends,
    stop_process,
    wait_port,
)

TOKEN = "workers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=3)  # a stuck supervisor fails a poll, not the test
BATCH = 20  # connections open at once in one attribution batch (modest: 2-core machine)
START = 25.0  # seconds for a worker to come up: imports take ~3-5 s on a busy 2-core box

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


# -- veer as a process ------------------------------------------------------------------
@dataclass
class Veer:
    """A running supervisor: its process, ports, config (as written) and log."""

    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    path: Path
    cfg: dict[str, Any]
    log: Path
    seen: dict[int, psutil.Process] = field(default_factory=dict)  # every worker, for teardown
    answered: Counter[str] = field(default_factory=Counter)  # 200s the test got, by variant
    names: Iterator[int] = field(default_factory=itertools.count)
    client_tls: ssl.SSLContext | None = None  # a TLS listener's clients (name: localhost)

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin}"

    def user(self, prefix: str = "u") -> str:
        """A user id never used before by this test (so routing is by fresh users)."""
        return f"{prefix}{next(self.names)}"

    def workers(self) -> list[psutil.Process]:
        """The supervisor's live worker processes (zombies awaiting the supervisor left out)."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return [c for c in children if not gone(c)]

    def logs(self, tail: int = 3000) -> str:
        with self.log.open("rb") as f:
            f.seek(max(0, self.log.stat().st_size - tail))
            return f.read().decode(errors="replace")

    def log_head(self, size: int = 200_000) -> str:
        with self.log.open("rb") as f:
            return f.read(size).decode(errors="replace")

    def not_flooding(self) -> None:
        """Fail at once if the log passes 20 MB: a supervisor spinning on an error writes
        ~6 MB/s, and waiting out a deadline would only grow the file."""
        size = self.log.stat().st_size
        if size < 20e6:
            return
        lines = [line.split(" ", 2)[-1] for line in self.log_head().splitlines()[:-1]
                 if " ERROR " in line or "Error:" in line]
        raise AssertionError(f"veer's log is {size / 1e6:.0f} MB, its errors (each once): "
                             f"{list(dict.fromkeys(lines))[:5]}")

    def write(self, cfg: dict[str, Any] | str) -> None:
        """Replace the config file (a dict as YAML, a string as is)."""
        if isinstance(cfg, dict):
            self.cfg = cfg
            self.path.write_text(yaml.safe_dump(cfg))
        else:
            self.path.write_text(cfg)


def gone(p: psutil.Process) -> bool:
    """The process has exited (a zombie counts: it runs nothing and holds no socket)."""
    try:
        return bool(p.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def all_gone(procs: list[psutil.Process]) -> bool:
    return all(gone(p) for p in procs)


StartVeer = Callable[..., Awaitable[Veer]]


async def _accepting(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    async def up() -> bool:
        assert proc.poll() is None, "veer exited:\n" + log.read_text(errors="replace")[-3000:]
        return await accepts(port)

    await until(up, timeout=20, interval=0.05, what=f"veer to listen on {port}")


@pytest.fixture(scope="module")
def backend_ports() -> Iterator[Backends]:
    """The two demo backends, each answering with its own name (X-Backend)."""
    yield from run_backends()


@pytest.fixture
async def start_veer(tmp_path: Path, backend_ports: Backends) -> AsyncIterator[StartVeer]:
    """Start ``veer run`` (workers: 2 unless given) with the base config plus sections."""
    started: list[Veer] = []
    outs: list[Any] = []

    async def start(**sections: Any) -> Veer:
        port, admin = free_port(), free_port()
        cfg: dict[str, Any] = {
            "listen": f"{HOST}:{port}",
            "admin": {"listen": f"{HOST}:{admin}"},
            "upstreams": {"original": {"endpoints": [f"http://{HOST}:{backend_ports.original}"]},
                          "new": {"endpoints": [f"http://{HOST}:{backend_ports.new}"]}},
            "routing": {"salt": "workers", "user_key": ["header:X-User-Id"]},
            "weights": {"new": 0},
            "workers": 2,
            **sections,
        }
        path = tmp_path / f"veer-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = tmp_path / f"veer-{len(started)}.log"
        out = log.open("wb")
        outs.append(out)
        proc = subprocess.Popen([sys.executable, "-m", "admin.cli", "run", "--config", str(path)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "VEER_ADMIN_TOKEN": TOKEN})
        veer = Veer(proc, port, admin, path, cfg, log)
        started.append(veer)
        await _accepting(port, proc, log)  # the supervisor binds before any worker starts
        await _accepting(admin, proc, log)
        return veer

    try:
        yield start
    finally:
        for veer in started:  # only what this test started, by PID
            veer.workers()  # note the workers before their supervisor goes
            if veer.proc.poll() is None:
                veer.proc.kill()
                veer.proc.wait(10)
            procs = list(veer.seen.values())
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()  # psutil checks the PID still names the process it saw
            # Orphaned, they are reaped by init when it gets to it: a zombie is ended enough.
            until_sync(functools.partial(all_gone, procs), timeout=10, interval=0.01,
                       what="the workers to exit")
        for out in outs:
            out.close()


# -- admin API ----------------------------------------------------------------------------
async def status(s: aiohttp.ClientSession, veer: Veer) -> dict[str, Any]:
    async with s.get(f"{veer.admin_url}/status", timeout=ADMIN_TIMEOUT) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def status_or_none(s: aiohttp.ClientSession, veer: Veer) -> dict[str, Any] | None:
    """/status, or None if the supervisor does not answer in time (polls go on)."""
    try:
        return await status(s, veer)
    except (aiohttp.ClientError, TimeoutError):
        return None


def total(st: dict[str, Any]) -> int:
    return sum(int(v["requests_total"]) for v in st["variants"].values())


async def metrics(s: aiohttp.ClientSession, veer: Veer) -> dict[MetricKey, float]:
    """Every sample of /metrics by (name, labels); fails on a series exported twice."""
    async with s.get(f"{veer.admin_url}/metrics", timeout=ADMIN_TIMEOUT) as r:
        text = await r.text()
    samples: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"series exported twice: {key}"
            samples[key] = sample.value
    return samples


def series(samples: dict[MetricKey, float], name: str) -> dict[tuple[tuple[str, str], ...],
                                                                float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def put_weight(s: aiohttp.ClientSession, veer: Veer, new: float) -> None:
    async with s.put(f"{veer.admin_url}/weights", json={"new": new}, headers=AUTH,
                     timeout=ADMIN_TIMEOUT) as r:
        assert r.status == 200, await r.text()


async def events(s: aiohttp.ClientSession, veer: Veer, kind: str) -> list[dict[str, Any]]:
    async with s.get(f"{veer.admin_url}/events", params={"kind": kind},
                     timeout=ADMIN_TIMEOUT) as r:
        found: list[dict[str, Any]] = (await r.json())["events"]
        return found


# -- the data plane, on raw streams ---------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """One response; the demo backend frames every answer used here by Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    body = await reader.readexactly(int(headers["content-length"]))
    return Reply(int(lines[0].split(" ", 2)[1]), headers, body)


@dataclass(frozen=True)
class Served:
    """What one request got: status 0 if no complete response (``error`` says why)."""

    status: int
    variant: str = ""
    backend: str = ""
    worker: int | None = None  # the PID holding the server end (attribution batches only)
    error: str = ""
    body: bytes = b""


async def exchange(veer: Veer, user: str, path: str = "/x", keep_open: bool = False,
                   timeout: float = 10) -> tuple[Served, asyncio.StreamWriter | None]:
    """One request on a fresh connection; with ``keep_open`` the connection is returned open
    after the response (so the worker serving it can be found)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            HOST, veer.port, ssl=veer.client_tls,
            server_hostname="localhost" if veer.client_tls is not None else None), 5)
    except (OSError, TimeoutError) as e:
        return Served(0, error=f"connect: {e!r}"), None
    close = "" if keep_open else "Connection: close\r\n"
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: veer\r\nX-User-Id: {user}\r\n{close}\r\n"
                     .encode())
        reply = await asyncio.wait_for(read_reply(reader), timeout)
    except (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, KeyError,
            ValueError) as e:
        writer.close()
        return Served(0, error=f"exchange: {e!r}"), None
    served = Served(reply.status, reply.headers.get("x-veer-variant", ""),
                    reply.headers.get("x-backend", ""), body=reply.body)
    if reply.status == 200:
        veer.answered[served.variant] += 1
    if keep_open:
        return served, writer
    writer.close()
    return served, None


def owners(veer: Veer, ports: set[int]) -> dict[int, int]:
    """Client port -> PID of the worker holding the other end of that connection."""
    found: dict[int, int] = {}
    for w in veer.workers():
        try:
            conns = w.net_connections(kind="tcp4")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.raddr and c.raddr.port in ports and c.laddr.port == veer.port:
                found[c.raddr.port] = w.pid
    return found


async def batch(veer: Veer, n: int = BATCH, prefix: str = "u", path: str = "/x") -> list[Served]:
    """``n`` fresh users, each on a fresh connection held open until every response is in,
    then attributed to the worker holding it."""
    done = await asyncio.gather(*(exchange(veer, veer.user(prefix), path, keep_open=True)
                                  for _ in range(n)))
    who = owners(veer, {w.get_extra_info("sockname")[1] for _, w in done if w is not None})
    out = []
    for served, writer in done:
        if writer is None:
            out.append(served)
            continue
        pid = who.get(writer.get_extra_info("sockname")[1])
        out.append(Served(served.status, served.variant, served.backend, pid, served.error))
        writer.close()
    return out


def by_worker(results: Iterable[Served]) -> Counter[int | None]:
    return Counter(r.worker for r in results if r.status == 200)


async def all_serving(veer: Veer, count: int, timeout: float = START) -> float:
    """Until ``count`` workers run and every one of them has answered a request (a worker
    counts as alive from its fork, seconds before it accepts anything). Returns seconds."""
    served: set[int] = set()

    async def serving() -> bool:
        pids = {w.pid for w in veer.workers()}
        served.update(r.worker for r in await batch(veer, 10, "warm") if r.worker)
        return len(pids) == count and pids <= served

    try:
        return await until(serving, timeout, interval=0.05, what=f"{count} workers to serve")
    except AssertionError as e:
        raise AssertionError(f"{e}; log tail:\n{veer.logs()}") from e


async def converge(veer: Veer, variant: str, backend: str, timeout: float = 10) -> float:
    """Until a batch of fresh users all get ``variant`` from ``backend``; then, until every
    live worker has been seen serving, every response must be that (no worker lags).
    Returns the seconds the first part took."""
    want = (200, variant, backend)
    last: list[Served] = []

    async def switched() -> bool:
        last[:] = await batch(veer, 10)
        return all((r.status, r.variant, r.backend) == want for r in last)

    try:
        took = await until(switched, timeout, interval=0.02, what=f"every request on {want}")
    except AssertionError as e:
        got = Counter((r.status, r.variant, r.backend, r.worker, r.error) for r in last)
        raise AssertionError(f"{e}; the last batch got {got}; workers now "
                             f"{[w.pid for w in veer.workers()]}; veer's log:\n"
                             f"{veer.logs()}") from e
    seen: Counter[int | None] = Counter()

    async def every_worker() -> bool:
        got = await batch(veer)
        wrong = [r for r in got if (r.status, r.variant, r.backend) != want]
        assert not wrong, f"after converging, requests not on {want}: {wrong[:3]}"
        seen.update(by_worker(got))
        return {w.pid for w in veer.workers()} <= set(seen)

    await until(every_worker, timeout, interval=0, what="every worker to serve after the change")
    print(f"{want} reached in {took:.3f}s; then served by workers {dict(seen)}")
    return took


# -- 1. both workers serve; /status and /metrics sum them ------------------------------------
async def test_two_workers_share_the_listener_and_counts_sum_exactly(
    start_veer: StartVeer
) -> None:
    veer = await start_veer(weights={"new": 50})
    warm = await all_serving(veer, 2)
    results: list[Served] = []
    for _ in range(400 // BATCH):
        results += await batch(veer)
    failed = [r for r in results if r.status != 200]
    assert not failed, failed[:3]
    per_worker = by_worker(results)
    print(f"workers served after {warm:.2f}s; 400 requests by worker: {dict(per_worker)}, "
          f"by variant: {dict(Counter(r.variant for r in results))}")
    assert None not in per_worker  # every connection was found in exactly one worker
    assert len(per_worker) == 2 and min(per_worker.values()) > 0
    assert set(veer.answered) == {"original", "new"}  # both variants' sums are exercised

    async with aiohttp.ClientSession() as s:
        last: dict[str, int] = {}

        async def reported() -> bool:  # reports come every 0.25 s: poll, then equal exactly
            st = await status(s, veer)
            last.update({v: st["variants"][v]["requests_total"] for v in st["variants"]})
            return last == dict(veer.answered)

        try:
            took = await until(reported, timeout=5, interval=0.05, what="/status to add up")
        except AssertionError as e:
            raise AssertionError(f"/status {last}, sent {dict(veer.answered)}") from e
        print(f"/status matched {dict(veer.answered)} {took:.2f}s after the last response")
        st = await status(s, veer)
        assert st["workers"] == {"count": 2, "alive": 2, "restarts": 0}

        m = await metrics(s, veer)  # also: no (name, labels) twice
        requests = series(m, "veer_requests_total")
        assert {dict(k)["code"] for k in requests} == {"200"}
        for variant, n in veer.answered.items():
            assert sum(v for k, v in requests.items() if dict(k)["variant"] == variant) == n
        assert series(m, "veer_workers") == {(): 2.0}
        assert series(m, "veer_worker_restarts_total") == {(): 0.0}


# -- 2. kill -9 of a worker --------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    started: float  # monotonic, before connect
    served: Served


async def load(veer: Veer, stop: asyncio.Event, out: list[Attempt], name: str) -> None:
    """One client: a fresh connection per request until ``stop``, paced (not a wait for
    behaviour: 4 clients at under 100 requests/s each leave the 2 cores room for veer)."""
    while not stop.is_set():
        t = time.monotonic()
        served, _ = await exchange(veer, veer.user(name))
        out.append(Attempt(t, served))
        await asyncio.sleep(0.01)


async def test_kill9_of_a_worker_loses_no_new_connection_and_it_is_replaced(
    start_veer: StartVeer
) -> None:
    veer = await start_veer()
    await all_serving(veer, 2)
    phase_a = by_worker([r for _ in range(5) for r in await batch(veer)])
    victim = next(w for w in veer.workers() if phase_a[w.pid] > 0)  # its counts must stay
    survivor = next(w for w in veer.workers() if w.pid != victim.pid)

    async with aiohttp.ClientSession() as s:
        async def caught_up() -> bool:
            return total(await status(s, veer)) == sum(veer.answered.values())

        await until(caught_up, timeout=5, interval=0.05, what="/status to count phase A")
        before = sum(veer.answered.values())
        samples = [before]

        attempts: list[Attempt] = []
        stop = asyncio.Event()
        clients = [asyncio.ensure_future(load(veer, stop, attempts, f"load{i}-"))
                   for i in range(4)]
        try:
            await until(lambda: len(attempts) >= 50, timeout=10, interval=0.01,
                        what="load to run")
            killed_at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            await until(lambda: gone(victim), timeout=5, interval=0.001, what="the victim to die")
            dead_at = time.monotonic()  # after this no connection can reach the victim
            print(f"victim {victim.pid} dead {1000 * (dead_at - killed_at):.1f} ms after kill")

            replacement: set[int] = set()

            async def replaced() -> bool:  # a new worker, taking connections
                st = await status_or_none(s, veer)
                if st is not None:
                    samples.append(total(st))
                fresh = {w.pid for w in veer.workers()} - {victim.pid, survivor.pid}
                got = by_worker(await batch(veer, 10, "after"))
                replacement.update(p for p in got if p is not None and p in fresh)
                return bool(replacement) and st is not None and st["workers"]["alive"] == 2

            took = await until(replaced, timeout=START, interval=0.05,
                               what="a replacement worker to serve")
            await until(lambda: len([a for a in attempts if a.started > dead_at]) >= 200,
                        timeout=10, interval=0.01, what="200 requests after the kill")
        finally:
            stop.set()
            await asyncio.gather(*clients)

        before_death = [a for a in attempts if a.started <= dead_at]
        after_death = [a for a in attempts if a.started > dead_at]
        lost = [a.served.error for a in before_death if a.served.status != 200]
        print(f"replacement {replacement} serving {took:.2f}s after the death; "
              f"{len(before_death)} requests started before the death ({len(lost)} failed: "
              f"in flight on the victim {lost[:3]}), {len(after_death)} after")
        failed = [a.served for a in after_death if a.served.status != 200]
        assert not failed, f"{len(failed)} requests after the death failed: {failed[:3]}"
        assert len(lost) <= 4  # at most each client's one request open on the victim

        st = await status(s, veer)
        assert st["workers"] == {"count": 2, "alive": 2, "restarts": 1}
        restarted = await events(s, veer, "worker-restarted")
        assert len(restarted) == 1 and restarted[0]["from"] == f"pid {victim.pid}", restarted
        assert restarted[0]["actor"] == "veer"
        m = await metrics(s, veer)
        assert series(m, "veer_worker_restarts_total") == {(): 1.0}
        assert series(m, "veer_workers") == {(): 2.0}

        # The victim's last report stays in the sum: what was counted never drops, and in
        # the end only what the victim answered after its last report (sent every 0.25 s)
        # is missing: at most the answers of the last second before its death.
        answered = sum(veer.answered.values())
        recent = sum(1 for a in before_death
                     if a.started > dead_at - 1.0 and a.served.status == 200)
        floor = max(before, answered - recent)

        async def added_up() -> bool:
            samples.append(total(await status(s, veer)))
            return samples[-1] >= floor

        try:
            await until(added_up, timeout=5, interval=0.05, what=f"requests_total >= {floor}")
        except AssertionError as e:
            raise AssertionError(f"{e}: {samples[-1]}, {answered} answered") from e
        assert all(a <= b for a, b in itertools.pairwise(samples)), "requests_total dropped"
        assert samples[-1] <= answered  # nothing counted twice
        print(f"requests_total {samples[-1]} of {answered} answered: the victim's last "
              f"{answered - samples[-1]} unreported (bound {recent})")


async def test_kill9_of_a_worker_with_messages_unread_is_replaced(start_veer: StartVeer) -> None:
    """A worker killed with messages from the supervisor still in its socket (it was busy,
    or still starting up) must be replaced like any other. The kernel then reports
    ECONNRESET, not EOF, on the supervisor's end of the channel."""
    veer = await start_veer()
    await all_serving(veer, 2)
    victim, survivor = veer.workers()
    async with aiohttp.ClientSession() as s:
        os.kill(victim.pid, signal.SIGSTOP)  # it cannot read what the supervisor sends now
        await put_weight(s, veer, 100)  # one live-state push, queued in the victim's socket
        os.kill(victim.pid, signal.SIGKILL)
        await until(lambda: gone(victim), timeout=5, interval=0.001, what="the victim to die")

        async def replaced() -> bool:
            veer.not_flooding()
            fresh = {w.pid for w in veer.workers()} - {victim.pid, survivor.pid}
            served = by_worker(await batch(veer, 10))
            st = await status_or_none(s, veer)
            return bool(fresh & set(served)) and st is not None and \
                st["workers"]["restarts"] == 1

        try:
            await until(replaced, timeout=15, interval=0.05,
                        what="a replacement worker to serve and /status to answer")
        except AssertionError as e:
            if str(e).startswith("timed out"):
                raise AssertionError(f"{e}; log tail:\n{veer.logs(600)}") from e
            raise


# -- 3. PUT /weights reaches every worker ------------------------------------------------
async def test_put_weights_reaches_every_worker(start_veer: StartVeer) -> None:
    veer = await start_veer()
    await all_serving(veer, 2)
    async with aiohttp.ClientSession() as s:
        await put_weight(s, veer, 100)
        took_new = await converge(veer, "new", "new")
        await put_weight(s, veer, 0)
        took_back = await converge(veer, "original", "original")
        async with s.get(f"{veer.admin_url}/weights", timeout=ADMIN_TIMEOUT) as r:
            assert await r.json() == {"original": 100.0, "new": 0.0}
    print(f"PUT new=100 applied everywhere in {took_new:.3f}s, new=0 in {took_back:.3f}s")


# -- 4. SIGHUP reloads every worker; a refused one changes nothing ------------------------
async def logged(veer: Veer, needle: str, timeout: float = 10) -> None:
    await until(lambda: needle in veer.log.read_text(errors="replace"), timeout,
                interval=0.02, what=f"{needle!r} in veer's log")


async def test_sighup_reloads_every_worker_and_a_refused_reload_keeps_the_old(
    start_veer: StartVeer, backend_ports: Backends
) -> None:
    veer = await start_veer()
    await all_serving(veer, 2)

    # The weight: the supervisor applies the config's weight and pushes it.
    veer.write({**veer.cfg, "weights": {"new": 100}})
    veer.proc.send_signal(signal.SIGHUP)
    await converge(veer, "new", "new")

    # An upstream: only a worker's own reload rebuilds its pools, so this shows each one
    # reloaded (variant new, now answered by the original backend).
    moved = {**veer.cfg, "upstreams": {**veer.cfg["upstreams"], "new": {
        "endpoints": [f"http://{HOST}:{backend_ports.original}"]}}}
    veer.write(moved)
    veer.proc.send_signal(signal.SIGHUP)
    await converge(veer, "new", "original")

    veer.write("upstreams: [this is not: valid\n")
    veer.proc.send_signal(signal.SIGHUP)
    await logged(veer, "reload refused, still running the previous config")
    for _ in range(5):
        got = await batch(veer)
        assert all((r.status, r.variant, r.backend) == (200, "new", "original") for r in got)
        assert len(by_worker(got)) >= 1
    assert "worker 0: reload refused" not in veer.log.read_text()  # never passed on
    assert "worker 1: reload refused" not in veer.log.read_text()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{veer.admin_url}/weights", timeout=ADMIN_TIMEOUT) as r:
            assert (await r.json())["new"] == 100.0
        reloads = await events(s, veer, "reload")
        assert [e["actor"] for e in reloads] == ["SIGHUP", "SIGHUP"], reloads
        assert (await status(s, veer))["workers"]["alive"] == 2


async def test_a_worker_restarted_after_a_refused_reload_serves_the_running_config(
    start_veer: StartVeer
) -> None:
    """A refused reload leaves the old config running; a worker restarted afterwards must
    serve that config too, not fail on (or pick up) the file the supervisor refused."""
    veer = await start_veer()
    await all_serving(veer, 2)
    veer.write("upstreams: [this is not: valid\n")
    veer.proc.send_signal(signal.SIGHUP)
    await logged(veer, "reload refused, still running the previous config")
    victim, survivor = veer.workers()
    os.kill(victim.pid, signal.SIGKILL)
    await until(lambda: gone(victim), timeout=5, interval=0.001, what="the victim to die")

    async def replaced() -> bool:
        fresh = {w.pid for w in veer.workers()} - {victim.pid, survivor.pid}
        got = await batch(veer, 10)
        assert all(r.status == 200 for r in got), got  # the survivor serves meanwhile
        if fresh & set(by_worker(got)):
            return True
        veer.not_flooding()
        return False

    try:
        await until(replaced, timeout=15, interval=0.05, what="a replacement worker to serve")
    except AssertionError as e:
        errors = [line for line in veer.log_head().splitlines() if "ConfigError" in line]
        raise AssertionError(f"{e}; the replacement's errors: {errors[:2]}") from e


async def test_every_worker_runs_the_config_the_supervisor_reloaded(
    start_veer: StartVeer, backend_ports: Backends
) -> None:
    """On SIGHUP the supervisor validates and applies the file, then sends each worker the
    text it applied. A worker that gets to it late (busy; here stopped with SIGSTOP) must
    still end up on the config the supervisor applied, not on whatever the file holds by
    then (here a broken edit)."""
    veer = await start_veer(weights={"new": 100})
    await all_serving(veer, 2)
    late = veer.workers()[0]
    moved = {**veer.cfg, "upstreams": {**veer.cfg["upstreams"], "new": {
        "endpoints": [f"http://{HOST}:{backend_ports.original}"]}}}
    os.kill(late.pid, signal.SIGSTOP)
    try:
        veer.write(moved)
        veer.proc.send_signal(signal.SIGHUP)
        await logged(veer, "reloaded ")  # the supervisor applied it; the other worker too
        veer.write("upstreams: [an edit in progress\n")
    finally:
        os.kill(late.pid, signal.SIGCONT)
    try:
        await converge(veer, "new", "original")
    except AssertionError as e:
        raise AssertionError(f"the late worker is {late.pid}: {e}") from e


# -- 5. SIGTERM drains every worker --------------------------------------------------------
async def slow_in_flight(veer: Veer, s: aiohttp.ClientSession,
                         seconds: float
                         ) -> asyncio.Future[tuple[Served, asyncio.StreamWriter | None]]:
    """A slow request through veer, returned once a worker reports it in flight."""
    slow = asyncio.ensure_future(exchange(veer, "slow-user", f"/slow?s={seconds}",
                                          timeout=seconds + 20))

    async def in_flight() -> bool:
        st = await status_or_none(s, veer)
        return st is not None and st["variants"]["original"]["in_flight"] == 1

    await until(in_flight, timeout=5, interval=0.02, what="the slow request in flight")
    return slow


async def test_sigterm_drains_every_worker_then_exits_0(start_veer: StartVeer) -> None:
    veer = await start_veer()
    await all_serving(veer, 2)
    workers = veer.workers()
    async with aiohttp.ClientSession() as s:
        slow = await slow_in_flight(veer, s, 1.5)
        sent = time.monotonic()
        veer.proc.send_signal(signal.SIGTERM)
        served, _ = await slow
        answered = time.monotonic() - sent
    assert (served.status, served.body) == (200, b"original slow\n"), served
    took = await until(lambda: veer.proc.poll() is not None, timeout=15, interval=0.02,
                       what="the supervisor to exit after the drain")
    assert veer.proc.returncode == 0, veer.logs()
    assert all(gone(w) for w in workers)
    print(f"slow request answered {answered:.2f}s after SIGTERM; exit 0 "
          f"{time.monotonic() - sent:.2f}s after it (waited {took:.2f}s)")


async def test_sigterm_refuses_new_connections_at_once(start_veer: StartVeer) -> None:
    """As with one process (tests/functional/test_process.py): after SIGTERM new
    connections are refused at once, so a client or load balancer goes elsewhere, while
    the in-flight request finishes. Not: accepted into the listen queue, never served, and
    reset when the drain ends (up to timeouts.drain, 30 s by default)."""
    veer = await start_veer()
    await all_serving(veer, 2)
    async with aiohttp.ClientSession() as s:
        slow = await slow_in_flight(veer, s, 3)
        veer.proc.send_signal(signal.SIGTERM)

        async def refused() -> bool:
            try:
                _, w = await asyncio.open_connection(HOST, veer.port)
            except OSError:
                return True
            w.close()  # accepted by the kernel; no worker will take it
            return False

        try:
            await until(refused, timeout=1.5, interval=0.02,
                        what="the listener to refuse connections after SIGTERM")
            assert not slow.done()  # refused while the drain is still going on
        finally:
            served, _ = await slow
    assert served.status == 200


# -- 6. workers: auto -----------------------------------------------------------------------
async def test_workers_auto_is_one_per_cpu(start_veer: StartVeer) -> None:
    cpus = len(os.sched_getaffinity(0))  # veer inherits this process's affinity
    veer = await start_veer(workers="auto")
    async with aiohttp.ClientSession() as s:
        st = await status(s, veer)
    if cpus == 1:  # auto on one CPU is one process: no supervisor
        assert "workers" not in st and veer.workers() == []
        return
    assert st["workers"]["count"] == cpus
    await until(lambda: len(veer.workers()) == cpus, timeout=5, interval=0.02,
                what=f"{cpus} worker processes")
    async with aiohttp.ClientSession() as s:

        async def all_alive() -> bool:  # a worker counts once it reports: it is serving
            return bool((await status(s, veer))["workers"]["alive"] == cpus)

        await until(all_alive, timeout=15, interval=0.05, what=f"{cpus} workers serving")


# -- 7. readiness ----------------------------------------------------------------------------
async def test_ready_only_once_a_worker_serves(start_veer: StartVeer) -> None:
    """/readyz must not send traffic to a host whose workers are still starting (each takes
    about a second of imports): 503 "no worker serving yet" until one reports."""
    veer = await start_veer()
    seen: list[tuple[int, list[str]]] = []
    async with aiohttp.ClientSession() as s:

        async def ready() -> bool:
            async with s.get(f"{veer.admin_url}/readyz", timeout=ADMIN_TIMEOUT) as r:
                seen.append((r.status, (await r.json())["problems"]))
                return r.status == 200

        await until(ready, timeout=20, interval=0.02, what="/readyz to say ready")
    # Polled from the moment the admin port accepts, long before a worker has imported.
    assert (503, ["no worker serving yet"]) in seen, seen[:3]
    served, _ = await exchange(veer, veer.user(), timeout=2)  # ready means it answers now
    assert served.status == 200


# -- 9. active health checks: the supervisor probes once for the host ----------------------
async def test_a_killed_backend_leaves_every_workers_rotation_with_no_traffic(
        start_veer: StartVeer) -> None:
    """The supervisor probes each endpoint once per interval and pushes each transition to
    its workers: with no client traffic at all, /metrics (the workers' readings merged)
    turns the killed endpoint to 0, and every worker then answers from the other."""
    port = free_port()
    backend = subprocess.Popen([sys.executable, "-c", BACKEND_SCRIPT, f"extra:{port}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, backend, "the backend to kill")
        veer = await start_veer(health={"active": {"interval": "200ms", "timeout": "150ms",
                                                   "healthy": 2, "unhealthy": 2}})
        await all_serving(veer, 2)  # and so past start-up: SIGHUP is handled
        cfg = veer.cfg
        cfg["upstreams"]["original"]["endpoints"].append(f"http://{HOST}:{port}")
        veer.write(cfg)
        veer.proc.send_signal(signal.SIGHUP)
        await logged(veer, "reloaded")
        label = f"http://{HOST}:{port}"
        key = (("endpoint", label), ("variant", "original"))
        async with aiohttp.ClientSession() as s:
            async def healthy_is(value: float) -> bool:
                return series(await metrics(s, veer), "veer_endpoint_healthy").get(key) == value

            await until(lambda: healthy_is(1.0), timeout=15, what="the extra endpoint up")
            stop_process(backend)
            killed = time.monotonic()
            await until(lambda: healthy_is(0.0), timeout=15, interval=0.02,
                        what="every worker to take the extra endpoint out")
            took = time.monotonic() - killed
            found = await events(s, veer, "endpoint-down")
            assert [e["from"] for e in found] == [label], found
        for _ in range(20):  # whichever worker answers, none tries the dead endpoint
            served, _ = await exchange(veer, veer.user(), timeout=5)
            assert served.status == 200
        print(f"dead endpoint out of every worker's rotation {took:.2f}s after the kill "
              "(interval 0.2 s x unhealthy 2)")
    finally:
        stop_process(backend)


# -- 10. TLS listener: every worker serves HTTPS, and SIGHUP renews every worker's certificate
def _served_serial(port: int, ca: Path) -> int:
    import socket

    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_every_worker_serves_tls_and_sighup_renews_every_workers_certificate(
        start_veer: StartVeer, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    ca_file, cert, key = tmp_path / "ca.pem", tmp_path / "veer.crt", tmp_path / "veer.key"
    ca.cert_pem.write_to_path(str(ca_file))

    def issue() -> None:
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))

    issue()
    veer = await start_veer(tls={"cert": str(cert), "key": str(key)})

    async def serials() -> set[int]:  # enough fresh handshakes to meet both workers
        return {await asyncio.to_thread(_served_serial, veer.port, ca_file) for _ in range(12)}

    veer.client_tls = ssl.create_default_context(cafile=str(ca_file))
    await all_serving(veer, 2)
    first = await serials()
    assert len(first) == 1
    issue()
    veer.proc.send_signal(signal.SIGHUP)
    await logged(veer, "reloaded")
    await until(lambda: _renewed(serials, first), timeout=15,
                what="every worker to hand out the renewed certificate")


async def _renewed(serials: Callable[[], Awaitable[set[int]]], old: set[int]) -> bool:
    seen = await serials()
    return len(seen) == 1 and not seen & old


# -- 11. mirroring across workers: each copies, the supervisor's picture merges the shadows
async def test_every_worker_mirrors_and_the_host_counts_each_copy_once(
        start_veer: StartVeer) -> None:
    veer = await start_veer(mirror={"percent": 100})
    await all_serving(veer, 2)
    async with aiohttp.ClientSession() as s:
        sent = 30
        for _ in range(sent):
            served, _ = await exchange(veer, veer.user("m"))
            assert served.status == 200 and served.variant == "original"

        async def counted() -> bool:  # at 100% every request to original has its copy
            st = await status(s, veer)
            total = st["variants"]["original"]["requests_total"]
            return bool(total >= sent and st.get("shadow", {}).get("requests_total") == total)

        await until(counted, timeout=15, what="a copy merged for every request, once")
        shadow = (await status(s, veer))["shadow"]
        assert shadow["mirror"] == 100.0 and shadow["mismatches_total"] == 0
        samples = await metrics(s, veer)
        assert series(samples, "veer_mirror_ratio") == {(): 1.0}
