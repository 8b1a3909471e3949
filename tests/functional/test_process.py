"""``veer`` as a real process: config errors, check, SIGTERM drain, memory while streaming."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
import yaml

from admin.demo.backend import Backend
from tests.deadline import until
from tests.ports import accepts, free_port

VEER = [sys.executable, "-m", "admin.cli"]


def write_config(tmp_path: Path, backends: dict[str, Backend], **extra: object) -> Path:
    cfg = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "upstreams": {"original": {"endpoints": [backends["original-a"].url]},
                      "new": {"endpoints": [backends["new"].url]}},
        "routing": {"salt": "proc", "user_key": ["header:X-User-Id"]},
        "weights": {"new": 0},
        **extra,
    }
    path = tmp_path / "veer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Wait until ``port`` accepts; fail at once (with veer's stderr) if ``proc`` exits."""

    async def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        return await accepts(port)

    await until(listening, timeout, interval=0.05, what=f"veer to listen on {port}")


@pytest.mark.parametrize(("content", "needle"), [
    ("listen: nowhere\nupstreams: {}\n", "listen"),
    ("upstreams:\n  original: {endpoints: [http://127.0.0.1:1]}\n"
     "  new: {endpoints: [http://127.0.0.1:2]}\nweights: {new: 250}\n", "weights.new"),
    ("upstreams: [\n", "valid YAML"),
])
def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    for command in ("check", "run"):
        r = subprocess.run([*VEER, command, "--config", str(path)], capture_output=True,
                           timeout=30)
        assert r.returncode == 2
        err = r.stderr.decode()
        assert str(path) in err and needle in err and "expected" in err


def test_check_prints_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("listen: 127.0.0.1:8080\nupstreams:\n"
                    "  original: {endpoints: ['http://127.0.0.1:9001', 'http://127.0.0.1:9003']}\n"
                    "  new: {endpoints: ['http://127.0.0.1:9002']}\n"
                    "routing: {salt: checkout-v2, user_key: ['header:X-User-Id', 'cookie:uid'],"
                    " anonymous: cookie}\nweights: {new: 10}\n")
    r = subprocess.run([*VEER, "check", "--config", str(path)], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    effective = yaml.safe_load(r.stdout)
    assert effective["weights"] == {"new": 10}
    assert effective["timeouts"]["connect"] == "2s"  # defaults are filled in


async def test_sigterm_drains_in_flight_request(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    path = write_config(tmp_path, backends)
    port = int(yaml.safe_load(path.read_text())["listen"].rsplit(":", 1)[1])
    proc = subprocess.Popen([*VEER, "run", "--config", str(path)], stderr=subprocess.PIPE)
    veer_process.append(proc)
    await wait_listening(port, proc)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(s.get(f"http://127.0.0.1:{port}/slow?s=1.5"))
        deadline = loop.time() + 10  # shared by the first two waits, as one budget
        await until(
            lambda: any(i.get("path") == "/slow?s=1.5" for i in backends["original-a"].seen),
            timeout=10, interval=0.02, what="the slow request to reach original-a")
        proc.send_signal(signal.SIGTERM)

        async def refused() -> bool:  # the listener closes at once: new connections fail
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            w.close()
            return False

        await until(refused, timeout=deadline - loop.time(), interval=0.02,
                    what="the listener to refuse connections after SIGTERM")
        resp = await slow
        assert resp.status == 200
        assert await resp.text() == "original-a slow\n"
    await until(lambda: proc.poll() is not None, timeout=deadline + 10 - loop.time(),
                interval=0.05, what="veer to exit after draining")
    assert proc.returncode == 0


async def _pattern(total: int, block: int = 65536) -> AsyncIterator[bytes]:
    chunk = bytes(range(256)) * (block // 256)
    sent = 0
    while sent < total:
        part = chunk[: min(block, total - sent)]
        sent += len(part)
        yield part


def _pattern_sha(total: int, block: int = 65536) -> str:
    digest = hashlib.sha256()
    chunk = bytes(range(256)) * (block // 256)
    sent = 0
    while sent < total:
        part = chunk[: min(block, total - sent)]
        digest.update(part)
        sent += len(part)
    return digest.hexdigest()


async def test_100mb_upload_and_download_stream_in_bounded_memory(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    size = 100 * 1024 * 1024
    path = write_config(tmp_path, backends)
    port = int(yaml.safe_load(path.read_text())["listen"].rsplit(":", 1)[1])
    proc = subprocess.Popen([*VEER, "run", "--config", str(path)], stderr=subprocess.PIPE)
    veer_process.append(proc)
    await wait_listening(port, proc)
    ps = psutil.Process(proc.pid)
    baseline = ps.memory_info().rss
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, ps.memory_info().rss)
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/upload", data=_pattern(size)) as r:
                info = await r.json()
            assert info["size"] == size and info["sha256"] == _pattern_sha(size)
            for query in ("", "&cl=1"):  # chunked and Content-Length responses
                digest, got = hashlib.sha256(), 0
                async with s.get(f"http://127.0.0.1:{port}/download?n={size}{query}") as r:
                    async for part in r.content.iter_chunked(1 << 20):
                        digest.update(part)
                        got += len(part)
                assert got == size
                assert digest.hexdigest() == _pattern_sha(size)
    finally:
        done.set()
        await sampler
    growth = (peak - baseline) / 2**20
    print(f"veer RSS: baseline {baseline / 2**20:.1f} MiB, peak growth {growth:.1f} MiB")
    # 300 MB went through; the proxy's resident memory may grow only by buffers.
    assert growth < 4, f"veer RSS grew by {growth:.1f} MiB while streaming"  # 0.3 measured
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0


async def test_kill9_mid_rollout_then_restart_resumes(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    state = tmp_path / "state.json"
    admin_port = free_port()
    path = write_config(tmp_path, backends, admin={"listen": f"127.0.0.1:{admin_port}"},
                        rollout={"name": "crash", "tick": "100ms", "plan": [
                            {"name": "a", "weight": 5, "duration": "100ms",
                             "gates": {"min_requests": 5}},
                            {"name": "b", "weight": 20, "duration": "1h"},
                            {"name": "full", "weight": 100}]},
                        state={"path": str(state)})
    cfg = yaml.safe_load(path.read_text())
    del cfg["weights"]
    path.write_text(yaml.safe_dump(cfg))
    port = int(cfg["listen"].rsplit(":", 1)[1])

    def saved() -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads(state.read_text())
            return data
        except (OSError, ValueError):
            return {}

    proc = subprocess.Popen([*VEER, "run", "--config", str(path)], stderr=subprocess.PIPE)
    veer_process.append(proc)
    await wait_listening(port, proc)
    async with aiohttp.ClientSession() as s:
        i = 0

        async def advanced() -> bool:  # one request per poll until the plan advances to b
            nonlocal i
            if saved().get("phase") == 1:
                return True
            i += 1
            async with s.get(f"http://127.0.0.1:{port}/", headers={"X-User-Id": f"u{i}"}) as r:
                await r.read()
            return False

        try:
            await until(advanced, timeout=20, interval=0, what="the plan to advance to b")
        except AssertionError as e:
            raise AssertionError(saved()) from e
    proc.kill()  # SIGKILL: no drain, no goodbye
    proc.wait(10)
    assert saved()["weight_bp"] == 2000

    again = subprocess.Popen([*VEER, "run", "--config", str(path)], stderr=subprocess.PIPE)
    veer_process.append(again)
    await wait_listening(port, again)
    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    assert 'veer_weight_ratio{variant="new"} 0.2' in text
    assert 'veer_rollout_phase_info{phase="b",rollout="crash",status="progressing"} 1.0' in text
    assert saved()["phase"] == 1
    os.kill(again.pid, signal.SIGTERM)
    assert again.wait(15) == 0
