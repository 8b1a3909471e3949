"""Operating a real ``veer run`` with the CLI as an operator would, each command a subprocess:
retry after a rollback, a status that says what was rolled back, reload, a closed pipe, and
the actions that need a rollout where none is configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import proxy
from admin.demo.backend import Backend
from tests.deadline import until_sync
from tests.functional.test_process import wait_listening
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "operate-token"
PLAN = [{"name": "canary", "weight": 10, "duration": "1h",
         "gates": {"max_error_rate": "5%", "min_requests": 20}},
        {"name": "full", "weight": 100}]


def veer(admin: int, *args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
    """One ``veer`` command against the admin API on ``admin``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEER_ADMIN")}
    env["VEER_ADMIN"] = f"http://127.0.0.1:{admin}"
    if token:
        env["VEER_ADMIN_TOKEN"] = TOKEN
    proc = subprocess.run([sys.executable, "-m", "admin.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def config(backends: dict[str, Backend], port: int, admin: int, tmp: Path,
           rollout: bool = True, salt: str = "operate") -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}", "admin": {"listen": f"127.0.0.1:{admin}"},
        "upstreams": {"original": {"endpoints": [backends["original-a"].url]},
                      "new": {"endpoints": [backends["new"].url]}},
        "routing": {"salt": salt, "user_key": ["header:X-User-Id"]}}
    if rollout:
        cfg["rollout"] = {"name": "checkout-v2", "tick": "100ms", "plan": PLAN}
        cfg["state"] = {"path": str(tmp / "state.json")}
    else:
        cfg["weights"] = {"new": 10}
    return cfg


def start(path: Path, cfg: dict[str, Any],
          procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "admin.cli", "run", "--config", str(path)],
                            cwd=ROOT, stderr=subprocess.PIPE,
                            env={**os.environ, "VEER_ADMIN_TOKEN": TOKEN})
    procs.append(proc)
    return proc


def status(admin: int) -> dict[str, Any]:
    out = veer(admin, "status", "--json")
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


async def running(tmp_path: Path, backends: dict[str, Backend],
                  procs: list[subprocess.Popen[bytes]], rollout: bool = True) -> int:
    """A ``veer run`` serving ``config(...)``; returns its admin port once it listens."""
    port, admin = free_port(), free_port()
    proc = start(tmp_path / "veer.yaml", config(backends, port, admin, tmp_path, rollout),
                 procs)
    await wait_listening(admin, proc)
    return admin


async def test_rollback_says_what_it_stopped_and_retry_starts_the_plan_again(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    admin = await running(tmp_path, backends, veer_process)

    refused = veer(admin, "retry")
    assert refused.returncode == 1 and "cannot retry while progressing" in refused.stderr

    assert veer(admin, "rollback", "--reason", "db errors").returncode == 0
    shown = veer(admin, "status")
    assert shown.returncode == 0
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in
             shown.stdout.splitlines()[:6] if line.strip()}
    assert lines["rollout"] == "checkout-v2  rolled-back"
    assert lines["rolled"].startswith("back  from phase canary (1/2) at weight 10% on new, ")
    assert lines["rolled"].endswith(" by " + (os.environ.get("USER") or "cli"))
    assert lines["why"] == "db errors"
    assert "stopped after" in lines["phase"] and "new now at 0%" in lines["phase"]
    assert "veer retry" in lines["next"]

    first = status(admin)
    ro = first["rollout"]
    assert ro["stopped"]["phase_name"] == "canary" and ro["stopped"]["weight"] == 10
    assert ro["phase"]["clock"] == "stopped" and ro["weight"] == 0
    until_sync(lambda: time.time() > first["time"] + 1.2, timeout=5, what="a second to pass")
    later = status(admin)["rollout"]
    assert later["phase"]["elapsed_s"] == ro["phase"]["elapsed_s"]  # the clock is stopped

    done = veer(admin, "retry", "--reason", "fixed the pool size")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("retry: rolled-back@0% -> progressing@10% "
                                  "(fixed the pool size; by ")
    after = status(admin)
    assert after["rollout"]["status"] == "progressing" and after["rollout"]["stopped"] is None
    assert after["rollout"]["phase"]["index"] == 0 and after["weights"]["new"] == 10
    assert after["rollout"]["phase"]["clock"] == "running"
    events = json.loads(veer(admin, "events", "--kind", "retry", "--json").stdout)["events"]
    assert [e["reason"] for e in events] == ["fixed the pool size"]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["status"] == "progressing" and saved["stopped"] == {}
    again = veer(admin, "retry")
    assert again.returncode == 1 and "cannot retry while progressing" in again.stderr


async def test_reload_from_the_cli_and_its_refusals(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "veer.yaml"
    proc = start(path, config(backends, port, admin, tmp_path), veer_process)
    await wait_listening(admin, proc)

    path.write_text(yaml.safe_dump(config(backends, port, admin, tmp_path, salt="other")))
    done = veer(admin, "reload")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reloaded {path}: routing"

    assert veer(admin, "reload", token=False).returncode == 4  # no token: nothing reloads
    path.write_text("upstreams: [this is not: valid\n")
    bad = veer(admin, "reload")
    assert bad.returncode == 1 and "invalid config" in bad.stderr
    assert "still running the previous config" in bad.stderr
    path.write_text(yaml.safe_dump(config(backends, free_port(), admin, tmp_path)))
    moved = veer(admin, "reload")
    assert moved.returncode == 1 and "listen" in moved.stderr
    assert json.loads(veer(admin, "events", "--kind", "reload", "--json").stdout)["total"] == 1


async def test_a_reader_that_leaves_early_is_not_an_error(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    admin = await running(tmp_path, backends, veer_process)
    env = {**os.environ, "VEER_ADMIN": f"http://127.0.0.1:{admin}"}
    for command in ("status", "status --json", "events", "weights"):
        # ``true`` exits before veer has even started, so every write meets a closed pipe.
        shell = (f"{sys.executable} -m admin.cli {command} | true; "
                 'echo "exit=${PIPESTATUS[0]}" >&2')
        run = subprocess.run(["bash", "-c", shell], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=30, check=False)
        assert run.stderr == "exit=0\n", (command, run.stderr)


async def test_actions_that_need_a_rollout_say_so(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    admin = await running(tmp_path, backends, veer_process, rollout=False)
    for action in ("advance", "retry", "promote", "rollback"):
        out = veer(admin, action)
        assert out.returncode == 1, (action, out.stderr)
        assert f"{action} needs a rollout, and none is configured" in out.stderr
        assert "rollout: section" in out.stderr
    shown = veer(admin, "status")
    assert shown.returncode == 0 and "none (weights set by hand)" in shown.stdout


async def test_status_says_which_build_runs(
    tmp_path: Path, backends: dict[str, Backend], veer_process: list[subprocess.Popen[bytes]]
) -> None:
    admin = await running(tmp_path, backends, veer_process, rollout=False)
    build = status(admin)["build"]
    # The same install and environment as this test's process: the same build.
    assert build == proxy.build()
    assert build["kind"] == os.environ.get("VEER_EXPECT_BUILD", build["kind"])
