"""Replicas of veer sharing one rollout through a real redis-server, as real processes.

What the cluster fault tests share: demo backends in their own processes (``new`` with a
control port that makes it fail on purpose), N ``veer run`` replicas with configs written
to the test's directory, their admin API with short timeouts, a paced traffic generator
that tells answers from a backend apart from veer's own failures, and stopping everything
this module started, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import redis
import yaml

from proxy.routing.hashing import bucket, choose
from tests.deadline import until
from tests.ports import accepts
from tests.redis_server import RedisServer
from tests.reliability.processes import HOST, ROOT, free_port, stop_process, wait_port

TOKEN = "t"  # VEER_ADMIN_TOKEN of every replica
SALT = "cluster"  # routing salt: the tests compute each user's variant with it
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUS_TIMEOUT = aiohttp.ClientTimeout(total=1.0)  # a paused or dead replica must not stall a poll
ACTION_TIMEOUT = aiohttp.ClientTimeout(total=5.0)

# A demo backend (admin/demo/backend.py) in a process of its own. With a control port it
# also answers ``PUT /fault {"every": n}``: from then on every n-th request it gets is a 500
# (n = 1: all of them, 0: none). Counted, not random, so a test knows the exact error rate.
BACKEND_SCRIPT = """
import asyncio, signal, sys
import uvloop
from aiohttp import web
from admin.demo.backend import make_app

async def main(name, port, control_port):
    fault = {"every": 0, "seen": 0}

    @web.middleware
    async def faults(request, handler):
        if fault["every"]:
            fault["seen"] += 1
            if fault["seen"] % fault["every"] == 0:
                return web.Response(status=500, text=name + ": injected fault\\n",
                                    headers={"X-Backend": name})
        return await handler(request)

    async def set_fault(request):
        fault["every"] = int((await request.json())["every"])
        fault["seen"] = 0
        return web.json_response(fault)

    app = make_app(name)
    app.middlewares.append(faults)
    runners = []
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    runners.append(runner)
    if control_port:
        control = web.Application()
        control.router.add_put("/fault", set_fault)
        runner = web.AppRunner(control, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", control_port).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in reversed(runners):
        await runner.cleanup()

uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


@dataclass(frozen=True)
class ClusterBackends:
    """The ports of the original backend, the new one and new's fault control."""

    original: int
    new: int
    new_control: int

    async def fail_every(self, every: int) -> None:
        """From now on every ``every``-th request new gets answers 500 (0: none)."""
        async with aiohttp.ClientSession(timeout=ACTION_TIMEOUT) as s, \
                s.put(f"http://{HOST}:{self.new_control}/fault", json={"every": every}) as r:
            assert r.status == 200, await r.text()


def run_cluster_backends() -> Iterator[ClusterBackends]:
    """Original and new demo backends, each in its own process; a fixture's body."""
    ports = ClusterBackends(free_port(), free_port(), free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, port, control in (("original", ports.original, 0),
                                    ("new", ports.new, ports.new_control)):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", BACKEND_SCRIPT, name, str(port), str(control)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port, procs[-1], f"the {name} backend")
            if control:
                wait_port(control, procs[-1], "new's fault control")
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)


def plan(*phases: dict[str, Any], name: str = "r1", tick: str = "100ms") -> dict[str, Any]:
    """A ``rollout:`` section with these phases (the last must be weight 100)."""
    return {"name": name, "tick": tick, "plan": list(phases)}


@dataclass
class Replica:
    """One ``veer run`` process of the cluster, started and stopped by this module only."""

    id: str
    port: int
    admin_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"replica {self.id} was never started"
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def start(self) -> None:
        """``veer run`` with this replica's config; its log goes to a file (a pipe nobody
        reads would fill and block it)."""
        env = {**os.environ, "VEER_ADMIN_TOKEN": TOKEN}
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "admin.cli", "run", "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no lease handed back, no goodbye."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing runs."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT: a stopped process cannot act on it), then SIGKILL."""
        if self.alive():
            self.resume()
            assert self.proc is not None
            stop_process(self.proc)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- veer {self.id} (pid {self.proc.pid if self.proc else '?'}) ---\n" + \
            "\n".join(text.splitlines()[-lines:])


def replica_config(replica: Replica, redis_url: str, name: str, backends: ClusterBackends,
                   rollout: dict[str, Any] | None, lease: str, weight: float) -> dict[str, Any]:
    """The YAML document of one replica (same cluster, plan and backends as the others)."""
    cfg: dict[str, Any] = {
        "listen": f"{HOST}:{replica.port}",
        "admin": {"listen": f"{HOST}:{replica.admin_port}"},
        "cluster": {"redis": redis_url, "name": name, "id": replica.id, "lease": lease},
        "upstreams": {"original": {"endpoints": [f"http://{HOST}:{backends.original}"]},
                      "new": {"endpoints": [f"http://{HOST}:{backends.new}"]}},
        "routing": {"salt": SALT, "user_key": ["header:X-User-Id"]},
        "timeouts": {"drain": "2s"},  # the teardown's SIGTERM should not wait long
    }
    if rollout is not None:
        cfg["rollout"] = rollout
    else:
        cfg["weights"] = {"new": weight}
    return cfg


class Cluster:
    """A redis-server (started by the test), the backends, and the replicas of one cluster
    name; an async context manager that stops every replica it started."""

    def __init__(self, tmp_path: Path, redis_server: RedisServer, backends: ClusterBackends,
                 name: str = "c1") -> None:
        self.tmp_path = tmp_path
        self.redis = redis_server
        self.backends = backends
        self.name = name
        self.replicas: list[Replica] = []
        self.generators: list[Traffic] = []
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Cluster:
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            for traffic in self.generators:  # a test that failed midway left them running
                await traffic.stop()
            for replica in self.replicas:
                replica.stop()
        finally:
            if self._http is not None:
                await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use the cluster as 'async with'"
        return self._http

    def replica(self, member_id: str) -> Replica:
        return next(r for r in self.replicas if r.id == member_id)

    def traffic(self, replica: Replica, rate: float, **options: Any) -> Traffic:
        """A traffic generator to ``replica``, started now and stopped at the latest when
        the cluster is (see ``Traffic`` for the options)."""
        generator = Traffic(replica, rate, **options).start()
        self.generators.append(generator)
        return generator

    def logs(self) -> str:
        """Every replica's log tail (for assertion messages)."""
        return "\n".join(r.log_tail() for r in self.replicas)

    async def start(self, ids: tuple[str, ...] = ("a", "b"), rollout: dict[str, Any] | None = None,
                    lease: str = "2s", weight: float = 0) -> list[Replica]:
        """Start the replicas together and wait until each serves, answers /status and
        the cluster agrees on one leader that lists every member."""
        started = []
        for member_id in ids:
            replica = Replica(member_id, free_port(), free_port(),
                              self.tmp_path / f"veer-{member_id}.yaml",
                              self.tmp_path / f"veer-{member_id}.log")
            replica.config.write_text(yaml.safe_dump(replica_config(
                replica, self.redis.url, self.name, self.backends, rollout, lease, weight)))
            replica.start()
            self.replicas.append(replica)
            started.append(replica)
        for replica in started:
            await self.wait_serving(replica)
        await self.settled()
        return started

    async def wait_serving(self, replica: Replica, timeout: float = 30) -> None:
        """Until the data plane accepts and /status answers; fails at once if it exits."""

        async def serving() -> bool:
            assert replica.alive(), f"replica {replica.id} exited\n{replica.log_tail()}"
            return await accepts(replica.port) and await self.status(replica) is not None

        await until(serving, timeout, interval=0.1, what=f"replica {replica.id} to serve")

    async def status(self, replica: Replica) -> dict[str, Any] | None:
        """GET /status, or None when it does not answer within a second."""
        try:
            async with self.http.get(f"{replica.admin}/status", timeout=STATUS_TIMEOUT) as r:
                if r.status != 200:
                    return None
                body: dict[str, Any] = await r.json()
                return body
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    async def statuses(self, replicas: list[Replica] | None = None) -> list[dict[str, Any] | None]:
        """/status of each replica (default: every one still running), fetched together."""
        chosen = replicas if replicas is not None else [r for r in self.replicas if r.alive()]
        return list(await asyncio.gather(*(self.status(r) for r in chosen)))

    async def leader(self, replicas: list[Replica] | None = None) -> str | None:
        """The leader every given replica names, when they all name the same one; else None."""
        leaders = {s["cluster"]["leader"] if s is not None else None
                   for s in await self.statuses(replicas)}
        return str(leaders.pop()) if len(leaders) == 1 and None not in leaders else None

    async def settled(self, replicas: list[Replica] | None = None, timeout: float = 15) -> str:
        """Until the replicas agree on a leader and each lists all of them; the leader's id."""
        chosen = replicas if replicas is not None else [r for r in self.replicas if r.alive()]
        ids = {r.id for r in chosen}
        found: list[str] = []

        async def agreed() -> bool:
            leader = await self.leader(chosen)
            if leader is None:
                return False
            for s in await self.statuses(chosen):
                if s is None or not ids <= {m["id"] for m in s["cluster"]["members"]}:
                    return False
            found.append(leader)
            return True

        try:
            await until(agreed, timeout, interval=0.1, what="the replicas to agree on a leader")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await self.statuses(chosen)}\n{self.logs()}") from None
        return found[-1]

    async def post(self, replica: Replica, path: str,
                   body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """An admin mutation with the token; (status, JSON body)."""
        async with self.http.post(f"{replica.admin}{path}", json=body or {}, headers=AUTH,
                                  timeout=ACTION_TIMEOUT) as r:
            return r.status, await r.json()

    async def put_weights(self, replica: Replica, new: float) -> tuple[int, dict[str, Any]]:
        """PUT /weights {"new": new} with the token; (status, JSON body)."""
        async with self.http.put(f"{replica.admin}/weights", json={"new": new}, headers=AUTH,
                                 timeout=ACTION_TIMEOUT) as r:
            return r.status, await r.json()

    async def all_show(self, check: Callable[[dict[str, Any]], bool],
                       replicas: list[Replica] | None = None,
                       timeout: float = 10, what: str = "every replica to agree") -> float:
        """Until ``check(status)`` holds on every given replica; fails with their statuses
        and logs. Returns the seconds it took."""
        last: list[dict[str, Any] | None] = []

        async def shown() -> bool:
            last[:] = await self.statuses(replicas)
            return all(s is not None and check(s) for s in last)

        try:
            return await until(shown, timeout, interval=0.05, what=what)
        except AssertionError as exc:
            summary = [summarise(s) for s in last]
            raise AssertionError(f"{exc}\n{summary}\n{self.logs()}") from None

    def stored_state(self) -> tuple[int, dict[str, Any] | None]:
        """The rollout state document in Redis and its version, read with redis-py."""
        with redis.Redis.from_url(self.redis.url, socket_timeout=2) as client:
            version, doc = client.hmget(f"veer:{self.name}:state", ["version", "doc"])
        return int(version or 0), (json.loads(doc) if doc is not None else None)

    def stored_epoch(self) -> int:
        """The lease's epoch counter in Redis."""
        with redis.Redis.from_url(self.redis.url, socket_timeout=2) as client:
            return int(client.get(f"veer:{self.name}:epoch") or 0)


def summarise(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of /status the tests compare, for short failure messages."""
    if status is None:
        return None
    ro = status.get("rollout") or {}
    cl = status.get("cluster") or {}
    return {"self": cl.get("self"), "leader": cl.get("leader"), "epoch": cl.get("epoch"),
            "redis": cl.get("redis_reachable"), "weights": status.get("weights"),
            "status": ro.get("status"), "phase": (ro.get("phase") or {}).get("index"),
            "members": [m["id"] for m in cl.get("members", [])]}


def rollout_of(status: dict[str, Any]) -> tuple[str, int, str, float]:
    """(status, phase index, phase name, new weight) of one /status."""
    ro = status["rollout"]
    return ro["status"], ro["phase"]["index"], ro["phase"]["name"], status["weights"]["new"]


def breach_trials(event: dict[str, Any]) -> int:
    """How many requests on new the error-rate finding of a rollback event judged (its
    detail reads ``hits/trials: ...``)."""
    for finding in event["evidence"]["findings"]:
        if finding["gate"] == "error_rate":
            # "60/240: lower bound ..." or "sudden rise: CUSUM ... (15/509 in the phase)"
            found = re.search(r"(\d+)/(\d+)", finding["detail"])
            assert found is not None, finding
            return int(found.group(2))
    raise AssertionError(f"no error_rate finding in {event}")


@dataclass
class Tally:
    """What a traffic generator saw. A *failure* is veer's own doing: a connection error,
    or an answer no backend gave (backends tag theirs with ``X-Backend``), or a backend's
    answer from the other variant than veer's ``x-veer-variant`` names."""

    sent: int = 0
    from_backend: Counter[tuple[str, int]] = field(default_factory=Counter)  # (variant, code)
    failures: list[str] = field(default_factory=list)
    misrouted: list[str] = field(default_factory=list)  # variant not the one the weight picks

    def answered(self, variant: str) -> int:
        return sum(n for (v, _), n in self.from_backend.items() if v == variant)

    def errors(self, variant: str) -> int:
        return sum(n for (v, code), n in self.from_backend.items() if v == variant and code >= 500)

    def non_2xx(self) -> int:
        return sum(n for (_, code), n in self.from_backend.items() if not 200 <= code < 300)


class Traffic:
    """Paced GETs with varied ``X-User-Id`` to one replica, from a few concurrent workers,
    until stopped (or until ``new_limit`` answers came from new)."""

    def __init__(self, replica: Replica, rate: float, users: int = 500, workers: int = 4,
                 prefix: str | None = None, new_limit: int | None = None,
                 weights_bp: tuple[int, ...] = ()) -> None:
        self.replica = replica
        self.rate = rate
        self.users = users
        self.workers = workers
        self.prefix = prefix or f"user-{replica.id}"
        self.new_limit = new_limit
        self.weights_bp = weights_bp  # if given, each user must land where one of them puts it
        self.tally = Tally()
        self.done = asyncio.Event()  # set when new_limit is reached
        self._stop = asyncio.Event()
        self._next = 0.0
        self._count = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> Traffic:
        loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.workers),
            timeout=aiohttp.ClientTimeout(total=5), cookie_jar=aiohttp.DummyCookieJar())
        self._next = loop.time()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self.workers)]
        return self

    async def stop(self) -> Tally:
        """Stop sending, wait for the requests under way, return the tally (again: the same
        tally, nothing more is sent)."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        try:
            await asyncio.gather(*tasks)
        finally:
            if self._session is not None:
                await self._session.close()
        return self.tally

    async def _worker(self) -> None:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            # Pacing, not waiting for behaviour: each worker takes the next send slot, so the
            # rate stays what the test asked for whatever the answers' speed.
            slot, self._next = self._next, max(self._next, loop.time() - 1) + 1 / self.rate
            if slot > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), slot - loop.time())
                if self._stop.is_set():
                    return
            self._count += 1
            user = f"{self.prefix}-{self._count % self.users}"
            await self._one(self._session, user)
            if self.new_limit is not None and self.tally.answered("new") >= self.new_limit:
                self.done.set()
                self._stop.set()

    async def _one(self, session: aiohttp.ClientSession, user: str) -> None:
        tally = self.tally
        tally.sent += 1
        try:
            async with session.get(f"{self.replica.url}/t", headers={"X-User-Id": user}) as r:
                body = await r.read()
                variant = r.headers.get("x-veer-variant", "")
                backend = r.headers.get("X-Backend")
                code = r.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            tally.failures.append(f"{user}: {type(exc).__name__}: {exc}")
            return
        if backend is None:
            tally.failures.append(f"{user}: HTTP {code} from veer: {body[:200]!r}")
            return
        if backend != variant:
            tally.failures.append(f"{user}: x-veer-variant {variant!r} but backend {backend!r}")
            return
        tally.from_backend[(variant, code)] += 1
        if self.weights_bp and variant not in {choose(bucket(SALT, user), w)
                                               for w in self.weights_bp}:
            tally.misrouted.append(f"{user} on {variant}, not where weight(s) "
                                   f"{[w / 100 for w in self.weights_bp]} put it")


async def hold(condition: Any, seconds: float, interval: float = 0.1,
               what: str = "condition") -> int:
    """Check ``condition()`` (sync or async) until ``seconds`` have passed; fail the first
    time it is false. For what must *not* happen: the window is the claim. Returns how many
    checks passed."""
    deadline = time.monotonic() + seconds
    checks = 0
    while time.monotonic() < deadline:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        assert result, f"{what} stopped holding after {checks} checks"
        checks += 1
        await asyncio.sleep(interval)  # the pace of the checks, not a wait for behaviour
    return checks
