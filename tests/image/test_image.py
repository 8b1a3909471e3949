"""The Docker image, built from this checkout and run for real.

It builds the image on ``$VEER_BASE_IMAGE`` (``.ci/base-image`` makes one,
Debian's python3 only, no pip), runs it (read-only root, no capabilities) with
a mounted config, a token file and a named volume for the state, sends traffic
through the published port to backends on the host (on the docker bridge's
address), advances the rollout, stops the container (a drain: SIGTERM, exit 0,
the in-flight request answered) and checks that a new container on the same
volume resumes at the same phase with the same events.

It needs docker, a daemon and the base image: without them it is skipped, under
``CI=true`` it fails. About a minute on a cold build cache (pip in the build),
10 s when the layers are cached.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
import yaml
from aiohttp import web

from admin.demo.backend import SEEN_KEY, make_app
from tests.deadline import until
from tests.ports import free_port
from tests.sysdeps import require_binary

REPO = Path(__file__).resolve().parents[2]
IMAGE = "veer-image-test:latest"  # left in the daemon: the next build reuses its layers
UID = 10001  # the Dockerfile's veer user
TOKEN = "image-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Veer-Actor": "image-test"}
BUILD_TIMEOUT = 600.0  # about 60 s here on a cold cache (pip installs scipy and the rest)
STOP_TIMEOUT = 20  # docker stop's grace before SIGKILL; a drain takes far less


def _missing(reason: str) -> NoReturn:
    """Skip for ``reason``; fail under CI=true, whose .ci/run sets everything up."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (.ci/run should have set it up)")
    pytest.skip(reason)


def require_docker() -> tuple[str, str]:
    """The docker client and the base image to build on, once a daemon answers."""
    docker = require_binary("docker", "apt-get install docker.io")
    base = os.environ.get("VEER_BASE_IMAGE", "")
    if not base:
        _missing("VEER_BASE_IMAGE is not set: the image to build veer on "
                 "(.ci/base-image makes veer-base:bookworm; python:3.12-slim where it can be "
                 "pulled)")
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
        if info.returncode != 0 or not info.stdout.strip():
            last = (info.stderr.strip().splitlines() or ["no output"])[-1]
            _missing(f"no docker daemon answers ({last}); start dockerd")
        inspect = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", base],
                                 capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        _missing(f"{' '.join(map(str, e.cmd))} did not answer in 30 s: is dockerd well?")
    if inspect.returncode != 0:
        _missing(f"the base image {base} is not in the daemon: make it with .ci/base-image "
                 f"(or docker pull {base})")
    return docker, base


class Docker:
    """The docker CLI, each call bounded in time; remembers what it made, to remove it."""

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.containers: list[str] = []
        self.volumes: list[str] = []

    async def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec(
            self.exe, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"docker {' '.join(args)}: no answer in {timeout:g} s") from None
        text = out.decode(errors="replace")
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{text[-4000:]}")
        return text

    async def inspect(self, thing: str, fmt: str) -> str:
        """``docker inspect --format fmt thing`` (a container ID or an image)."""
        return (await self("inspect", "--format", fmt, thing)).strip()

    def cleanup(self) -> None:
        """Remove the containers and volumes made, by ID and name (never anything else)."""
        if self.containers:
            subprocess.run([self.exe, "rm", "--force", *self.containers],
                           capture_output=True, timeout=60)
        if self.volumes:
            subprocess.run([self.exe, "volume", "rm", "--force", *self.volumes],
                           capture_output=True, timeout=60)


@pytest.fixture
def docker() -> Iterator[tuple[Docker, str]]:
    exe, base = require_docker()
    d = Docker(exe)
    yield d, base
    d.cleanup()


@dataclass
class HostBackend:
    """A demo backend on the host: its URL as the container sees it, what it was sent."""

    url: str
    seen: list[dict[str, Any]]

    def count(self, prefix: str) -> int:
        return sum(1 for e in self.seen if str(e["path"]).startswith(prefix))


async def bridge_gateway(d: Docker) -> str:
    """The host's address on docker's default bridge: the network's gateway, or (a daemon
    that does not report it, as here) the bridge interface's own IPv4 address."""
    net = json.loads(await d("network", "inspect", "bridge", "--format", "{{json .}}"))
    for c in net["IPAM"]["Config"] or []:
        if c.get("Gateway"):
            return str(c["Gateway"])
    name = net["Options"].get("com.docker.network.bridge.name", "docker0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:  # SIOCGIFADDR
            req = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError as e:
            raise AssertionError(f"no address on docker's bridge {name}: {e}") from None
    return socket.inet_ntoa(req[20:24])


@pytest.fixture
async def host_backends(docker: tuple[Docker, str]) -> AsyncIterator[dict[str, HostBackend]]:
    """The demo backends on the docker bridge's gateway address: the container reaches
    them there, as it would reach any service outside it."""
    d, _ = docker
    gateway = await bridge_gateway(d)
    runners: list[web.AppRunner] = []
    out: dict[str, HostBackend] = {}
    for name in ("original-a", "original-b", "new"):
        app = make_app(name)
        runner = web.AppRunner(app, access_log=None)
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, gateway, 0).start()
        host, port = runner.addresses[0][:2]
        out[name] = HostBackend(f"http://{host}:{port}", app[SEEN_KEY])
    yield out
    for r in runners:
        await r.cleanup()


def write_config(tmp_path: Path, backends: dict[str, HostBackend]) -> Path:
    """The README's rollout with state.path ./veer-state.json (the volume), listeners on
    0.0.0.0 (reachable through -p), the admin token from a mounted file."""
    cfg: dict[str, Any] = {
        "listen": "0.0.0.0:8080",
        "admin": {"listen": "0.0.0.0:9901", "token_file": "/run/secrets/veer-admin"},
        "upstreams": {
            "original": {"endpoints": [backends["original-a"].url,
                                       backends["original-b"].url]},
            "new": {"endpoints": [backends["new"].url]},
        },
        "routing": {"salt": "image-test", "user_key": ["header:X-User-Id"]},
        "timeouts": {"drain": "10s"},
        "rollout": {"name": "image-test", "tick": "250ms", "plan": [
            {"name": "canary", "weight": 1, "duration": "1h"},
            {"name": "ramp", "weight": 50, "duration": "1h"},
            {"name": "full", "weight": 100},
        ]},
        "state": {"path": "./veer-state.json"},
    }
    path = tmp_path / "veer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o644)  # read by uid 10001 in the container
    token = tmp_path / "veer-admin"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    return path


async def build(d: Docker, base: str) -> float:
    """``docker build`` of the checkout on ``base``; returns the seconds it took."""
    before = (await d("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False)).strip()
    start = time.monotonic()
    out = await d("build", "--build-arg", f"BASE={base}", "--tag", IMAGE, str(REPO),
                  timeout=BUILD_TIMEOUT)
    took = time.monotonic() - start
    if (before.startswith("sha256:") and before != await d.inspect(IMAGE, "{{.Id}}")
            and await d.inspect(before, "{{len .RepoTags}}") == "0"):
        # The image an earlier run built, now with no tag at all: its venv layer is 260 MB.
        # Docker refuses (and keeps it) if a container still uses it.
        await d("image", "rm", before, check=False)
    sent = [line for line in out.splitlines() if "build context" in line]
    size = int(await d.inspect(IMAGE, "{{.Size}}"))
    print(f"docker build on {base}: {took:.1f} s, image {size / 1e6:.0f} MB; "
          f"{sent[0].strip() if sent else ''}")
    return took


async def run(d: Docker, cfg: Path, volume: str, data_port: int, admin_port: int) -> str:
    """Start a container; its ID."""
    name = f"veer-image-test-{uuid.uuid4().hex[:8]}"
    d.containers.append(name)  # removed at the end even if docker run fails half-way
    return (await d(
        "run", "--detach", "--name", name,
        "--publish", f"127.0.0.1:{data_port}:8080", "--publish", f"127.0.0.1:{admin_port}:9901",
        "--volume", f"{cfg}:/etc/veer/veer.yaml:ro",
        "--volume", f"{cfg.parent / 'veer-admin'}:/run/secrets/veer-admin:ro",
        "--volume", f"{volume}:/var/lib/veer",
        # Hardened as the README suggests: veer writes nothing but its state on the volume
        # and binds no port below 1024.
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        # The image's HEALTHCHECK command, probed every second instead of every 10 s.
        "--health-interval", "1s",
        IMAGE)).strip()


async def wait_healthy(d: Docker, cid: str) -> float:
    """Poll the container's health until the HEALTHCHECK passes; fail at once if it exits."""

    async def healthy() -> bool:
        state = json.loads(await d.inspect(cid, "{{json .State}}"))
        if state["Status"] != "running":
            logs = await d("logs", cid, check=False)
            raise AssertionError(f"the container is {state['Status']} "
                                 f"(exit {state['ExitCode']}):\n{logs[-4000:]}")
        return bool(state.get("Health", {}).get("Status") == "healthy")

    return await until(healthy, timeout=60, interval=0.25, what="the HEALTHCHECK to pass")


async def traffic(s: aiohttp.ClientSession, data_port: int, users: range) -> dict[str, int]:
    """One GET per user through the container; how many each backend answered."""
    seen: dict[str, int] = {}
    for i in users:
        async with s.get(f"http://127.0.0.1:{data_port}/checkout?u={i}",
                         headers={"X-User-Id": f"user-{i}"}) as r:
            assert r.status == 200, (r.status, await r.text())
            body = await r.json()
            assert body["backend"] == r.headers["X-Backend"]
            assert body["path"] == f"/checkout?u={i}"
            seen[body["backend"]] = seen.get(body["backend"], 0) + 1
    return seen


async def admin_get(s: aiohttp.ClientSession, admin_port: int, path: str) -> Any:
    async with s.get(f"http://127.0.0.1:{admin_port}{path}") as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


async def serving(s: aiohttp.ClientSession, data_port: int) -> bool:
    """True once a request through the published port reaches a backend."""
    try:
        async with s.get(f"http://127.0.0.1:{data_port}/ready",
                         headers={"X-User-Id": "probe"}) as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_image_serves_drains_and_resumes_its_rollout_from_the_volume(
    docker: tuple[Docker, str], host_backends: dict[str, HostBackend], tmp_path: Path
) -> None:
    d, base = docker
    await build(d, base)
    config = json.loads(await d.inspect(IMAGE, "{{json .Config}}"))
    assert config["User"] == f"{UID}:{UID}"
    assert config["WorkingDir"] == "/var/lib/veer" and "/var/lib/veer" in config["Volumes"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    assert config["Entrypoint"] == ["veer", "run", "--config", "/etc/veer/veer.yaml"]

    cfg = write_config(tmp_path, host_backends)
    volume = f"veer-image-test-{uuid.uuid4().hex[:8]}"
    await d("volume", "create", volume)
    d.volumes.append(volume)
    data_port, admin_port = free_port(), free_port()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        # 1. Up: healthy by its own HEALTHCHECK, serving through the published port.
        first = await run(d, cfg, volume, data_port, admin_port)
        took = await wait_healthy(d, first)
        print(f"healthy {took:.1f} s after docker run")
        await until(lambda: serving(s, data_port), timeout=30, interval=0.1,
                    what="a request through the container to reach a backend")
        seen = await traffic(s, data_port, range(200))
        assert set(seen) <= {"original-a", "original-b", "new"}, seen
        assert seen.get("original-a") and seen.get("original-b"), seen  # round robin
        assert seen.get("new", 0) <= 10, seen  # canary: 1% of users
        assert sum(b.count("/checkout") for b in host_backends.values()) == 200

        # 2. The admin API: the token from the mounted file; advance to ramp (50%).
        async with s.post(f"http://127.0.0.1:{admin_port}/rollout/advance") as r:
            assert r.status == 401
        async with s.post(f"http://127.0.0.1:{admin_port}/rollout/advance", headers=AUTH) as r:
            assert r.status == 200, await r.text()
        status = await admin_get(s, admin_port, "/status")
        assert status["rollout"]["phase"]["index"] == 1, status["rollout"]
        assert status["rollout"]["weight"] == 50
        # The image's hot path is compiled (its build stage has a compiler; VEER_BUILD=mypyc).
        assert status["build"]["kind"] == "mypyc", status["build"]
        assert "compiled with mypyc" in await d("exec", first, "veer", "--version")
        seen = await traffic(s, data_port, range(200, 400))
        on_new = seen.get("new", 0)
        assert 50 <= on_new <= 150, seen
        # The CLI in the image finds the admin listener by itself ($VEER_ADMIN).
        cli = json.loads(await d("exec", first, "veer", "status", "--json"))
        assert cli["rollout"]["phase"]["index"] == 1, cli
        events_before = (await admin_get(s, admin_port, "/events?limit=500"))["events"]
        assert any(e["kind"] == "advance" and e["actor"] == "image-test"
                   for e in events_before), events_before

        # 3. Non-root, veer itself is PID 1 (exec form: it gets SIGTERM), the state is on
        # the volume, written by veer's user.
        probe = await d("exec", first, "python3", "-c", (
            "import json, os\n"
            "status = dict(l.split(':', 1) for l in open('/proc/1/status').read().splitlines())\n"
            "cmd = open('/proc/1/cmdline').read().split('\\0')\n"
            "st = os.stat('/var/lib/veer/veer-state.json')\n"
            "state = json.load(open('/var/lib/veer/veer-state.json'))\n"
            "print(json.dumps({'uid': status['Uid'].split(), 'cmd': cmd, 'owner': st.st_uid,\n"
            "                  'phase': state['phase'], 'cwd': os.readlink('/proc/1/cwd')}))\n"))
        facts = json.loads(probe)
        assert facts["uid"] == [str(UID)] * 4, facts  # real, effective, saved, fs
        assert "veer" in facts["cmd"][1] and facts["cmd"][2:4] == ["run", "--config"], facts
        assert facts["owner"] == UID and facts["phase"] == 1, facts
        assert facts["cwd"] == "/var/lib/veer", facts

        # 4. docker stop: SIGTERM, veer drains (the in-flight request is answered), exits 0.
        async def in_flight() -> tuple[int, str]:
            async with s.get(f"http://127.0.0.1:{data_port}/slow?s=2",
                             headers={"X-User-Id": "slow-user"}) as r:
                return r.status, await r.text()

        slow = asyncio.create_task(in_flight())
        await until(lambda: any(b.count("/slow") for b in host_backends.values()),
                    timeout=10, what="the slow request to reach its backend")
        start = time.monotonic()
        await d("stop", "--time", str(STOP_TIMEOUT), first, timeout=STOP_TIMEOUT + 30)
        stopped_in = time.monotonic() - start
        status_code, text = await asyncio.wait_for(slow, 10)
        assert status_code == 200 and text.endswith(" slow\n"), (status_code, text)
        state = json.loads(await d.inspect(first, "{{json .State}}"))
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state
        assert stopped_in < STOP_TIMEOUT, stopped_in  # drained, not killed
        print(f"docker stop drained and exited 0 in {stopped_in:.1f} s")

        # 5. A new container on the same volume resumes: same phase, the earlier events.
        second = await run(d, cfg, volume, data_port, admin_port)
        await wait_healthy(d, second)
        status = await admin_get(s, admin_port, "/status")
        assert status["rollout"]["phase"]["index"] == 1, status["rollout"]
        assert status["rollout"]["phase"]["name"] == "ramp"
        assert status["rollout"]["status"] == "progressing", status["rollout"]
        events_after = (await admin_get(s, admin_port, "/events?limit=500"))["events"]
        after = {(e["time"], e["kind"], e["actor"]) for e in events_after}
        assert {(e["time"], e["kind"], e["actor"]) for e in events_before} <= after
        await until(lambda: serving(s, data_port), timeout=30, interval=0.1,
                    what="the restarted container to serve")
        seen = await traffic(s, data_port, range(200, 400))
        assert seen.get("new", 0) == on_new, seen  # the same users on new as before the stop
        await d("stop", "--time", str(STOP_TIMEOUT), second, timeout=STOP_TIMEOUT + 30)
        assert await d.inspect(second, "{{.State.ExitCode}}") == "0"
