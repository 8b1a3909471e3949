"""Hostile review of the operator surface, against real processes and a real redis-server:
exit codes when stderr is a closed pipe, ``veer check`` against ``veer run`` on a state
path, and stopping a cluster replica. Each test fails on a real defect and says why."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cluster.member import connect
from proxy.cluster.redis_store import RedisStore
from proxy.control.state import RolloutState
from tests.ports import free_port
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VEER_ADMIN")}


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is already gone (``2>&1 | true`` after the
    reader left, a log shipper that died): every write to it is EPIPE."""
    r, w = os.pipe()
    os.close(r)
    yield w
    os.close(w)


def _veer(*args: str, stderr: int) -> int:
    proc = subprocess.run([sys.executable, "-m", "admin.cli", *args], cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=stderr, timeout=60, check=False)
    return proc.returncode


def test_a_failed_command_keeps_its_exit_code_when_stderr_is_a_closed_pipe(
        tmp_path: Path, closed_pipe: int) -> None:
    """README (CLI): "the exit status is what the command did" when a reader leaves early.
    But ``main`` catches every BrokenPipeError as the stdout reader leaving and returns 0,
    and the error message goes to stderr: when stderr is the closed pipe, an unreachable
    admin API (3), a refused action and a config ``veer check`` rejects (2) all exit 0,
    so a script or CI step sees success. Right: the command's own code (3 and 2 here)."""
    admin = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert _veer("status", "--admin", admin, stderr=subprocess.DEVNULL) == 3  # as it should
    assert _veer("status", "--admin", admin, stderr=closed_pipe) == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("weights: {new: 250}\n")
    assert _veer("check", "--config", str(bad), stderr=subprocess.DEVNULL) == 2
    assert _veer("check", "--config", str(bad), stderr=closed_pipe) == 2


def _state_dir_config(tmp_path: Path) -> Path:
    (tmp_path / "state.json").mkdir()  # the state path exists, as a directory
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}", "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "upstreams": {"original": {"endpoints": ["http://127.0.0.1:1"]},
                      "new": {"endpoints": ["http://127.0.0.1:2"]}},
        "rollout": {"name": "r", "plan": [{"name": "full", "weight": 100}]},
        "state": {"path": str(tmp_path / "state.json")}}
    path = tmp_path / "veer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_check_refuses_a_state_path_that_is_a_directory(tmp_path: Path) -> None:
    """README: check "refuses exactly what run refuses at start, with the same message and
    exit status 2", including the state file's place. Preflight only writes a probe file in
    the state path's directory; when ``state.path`` itself is a directory that passes, and
    check prints OK (exit 0) while run cannot read the state and fails. Right: check exits
    2 naming state.path."""
    path = _state_dir_config(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "admin.cli", "check", "--config", str(path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    assert "state.path" in proc.stderr


def test_run_refuses_a_state_path_that_is_a_directory_without_a_traceback(
        tmp_path: Path) -> None:
    """``veer run`` with ``state.path`` a directory: the IsADirectoryError from reading the
    state is an OSError, which ``ProxyServer._start_rollout`` catches as a *Redis* error
    (``REDIS_ERRORS`` includes OSError) and hands to ``_unreachable``, whose ``assert
    cluster is not None`` fails: veer dies with an AssertionError traceback instead of
    "cannot start: ...". Right: a one-line refusal naming the state file (and no
    traceback), like every other start-up failure."""
    path = _state_dir_config(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "admin.cli", "run", "--config", str(path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr, \
        proc.stderr[-1500:]
    assert "state" in proc.stderr


async def test_a_replica_stops_right_after_another_replica_saved(
        redis_server: RedisServer) -> None:
    """Stopping a cluster replica (SIGTERM, after the drain) cancels ``RedisStore._follow``
    and waits for it with no bound (``proxy.timing.tasks.cancel``). When the cancel lands
    while a Redis command of that loop is in flight (right after another replica's save
    was announced: the loop is reading the new version), redis-py (8.2, as installed;
    pyproject allows any >=5) returns from the command normally and the cancel is lost,
    so the loop runs on and ``close()``, ``Member.stop`` and ``ProxyServer.stop`` never
    return: the process hangs until it is killed. Seen with two replicas: an operator's
    rollback on the follower, then stopping the leader, hung 5 of 6 times. Right:
    ``close()`` returns promptly whatever the client library does with a cancel (a closed
    flag the loop checks, a bounded wait)."""
    writer = RedisStore(connect(redis_server.url), "shop")
    hung = 0
    for _ in range(5):
        watcher = RedisStore(connect(redis_server.url), "shop", poll=1.0)
        watcher.watch(lambda state, version: None)
        await asyncio.sleep(0.2)  # subscribed
        _, version = await writer.load()
        await writer.save(RolloutState(rollout="r"), version)  # another replica's save
        closing = asyncio.ensure_future(watcher.close())
        done, _ = await asyncio.wait([closing], timeout=3)
        if not done:
            hung += 1
            task = watcher._task
            if task is not None:  # let this test end: stop the loop by force
                for _ in range(50):
                    task.cancel()
                    await asyncio.sleep(0.05)
                    if task.done():
                        break
        await watcher.client.aclose()
    await writer.client.aclose()
    assert hung == 0, f"RedisStore.close() hung in {hung} of 5 stops"
