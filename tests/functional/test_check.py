"""``veer check`` as a subprocess: it refuses what ``veer run`` refuses, with the same message;
its output is a config that means the same; it says what each gate needs."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.load import load

ROOT = Path(__file__).resolve().parents[2]
PLAN = [{"name": "canary", "weight": 1, "duration": "10m",
         "gates": {"max_error_rate": "1%", "max_p99": "200ms", "min_requests": 100}},
        {"name": "ramp", "weight": 10, "duration": "30m",
         "gates": {"max_error_rate": "0.1%", "max_p99": "200ms"}},
        {"name": "full", "weight": 100}]


def veer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "VEER_ADMIN_TOKEN"}
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "admin.cli", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def write(path: Path, extra: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:1", "admin": {"listen": "127.0.0.1:2"},
        "upstreams": {"original": {"endpoints": ["http://127.0.0.1:3"]},
                      "new": {"endpoints": ["http://127.0.0.1:4"]}},
        "rollout": {"name": "checkout-v2", "plan": PLAN}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_printed_config_is_yaml_that_means_the_same(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", {"state": {"path": str(tmp_path / "s" / "state.json")},
                                    "routing": {"salt": "s", "user_key": ["cookie:uid"]},
                                    "mirror": {"percent": 5}})
    first = veer("check", "--config", str(a))
    assert first.returncode == 0, first.stderr
    b = tmp_path / "b.yaml"
    b.write_text(first.stdout)
    assert "new_weight_bp" not in first.stdout and "duration_s" not in first.stdout
    assert yaml.safe_load(first.stdout)["rollout"]["plan"][0]["gates"]["max_p99"] == "200ms"
    second = veer("check", "--config", str(b))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]  # bar the header
    assert dataclasses.replace(load(a), source="", text="") == \
        dataclasses.replace(load(b), source="", text="")
    assert not (tmp_path / "s").exists()  # check made nothing


def test_it_says_what_each_gate_needs_and_when_each_phase_can_advance(tmp_path: Path) -> None:
    cfg = write(tmp_path / "a.yaml", {})
    out = veer("check", "--config", str(cfg)).stderr
    assert "max_p99 200ms at 99% can pass after >= 299 requests on new with none slower" in out
    assert "max_error_rate 0.1% can pass after >= 2,995 requests on new with no error" in out
    assert "EARLIEST" not in out  # only with --rate
    timed = veer("check", "--config", str(cfg), "--rate", "2")
    assert timed.returncode == 0
    rows = {line.split()[0]: line.split()[1:] for line in timed.stderr.splitlines()
            if line.startswith("  ") and line.split()[0] in ("canary", "ramp", "full")}
    # canary: 299 requests take 2m29s at 2/s, under its 10 minutes; ramp: 2,995 take 24m57s,
    # under 30m; full: its 100 requests, 50 s. In all 40m50s.
    assert rows["canary"] == ["299", "2m29s", "10m00s", "10m00s", "10m00s"]
    assert rows["ramp"] == ["2,995", "24m57s", "30m00s", "30m00s", "40m00s"]
    assert rows["full"] == ["100", "50s", "0s", "50s", "40m50s"]
    slow = veer("check", "--config", str(cfg), "--rate", "1").stderr
    assert "ramp    2,995  49m55s" in slow
    bad = veer("check", "--config", str(cfg), "--rate", "0")
    assert bad.returncode == 2 and "must be more than 0" in bad.stderr


def refusal(args: list[str], tmp_path: Path, extra: dict[str, Any],
            env: dict[str, str] | None = None) -> str:
    """check and run both exit 2 with the same ``config error`` lines; returns them."""
    cfg = str(write(tmp_path / "bad.yaml", extra))
    checked = veer("check", "--config", cfg, *args, env=env)
    ran = veer("run", "--config", cfg, env=env)
    assert (checked.returncode, ran.returncode) == (2, 2), (checked.stderr, ran.stderr)
    errors = [line for line in checked.stderr.splitlines() if "config error" in line]
    assert errors and errors == [line for line in ran.stderr.splitlines()
                                 if "config error" in line]
    assert checked.stdout == ""
    return "\n".join(errors)


def test_an_unreadable_or_empty_token_file_is_refused_by_both(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    said = refusal([], tmp_path, {"admin": {"listen": "127.0.0.1:2",
                                            "token_file": str(missing)}})
    assert f"admin.token_file {missing}: No such file or directory" in said
    empty = tmp_path / "empty"
    empty.write_text("\n")
    said = refusal([], tmp_path, {"admin": {"listen": "127.0.0.1:2",
                                            "token_file": str(empty)}})
    assert f"admin.token_file {empty} is empty" in said
    # With VEER_ADMIN_TOKEN set, run never reads the file: check does not either.
    cfg = write(tmp_path / "env.yaml", {"admin": {"listen": "127.0.0.1:2",
                                                  "token_file": str(missing)}})
    assert veer("check", "--config", str(cfg), env={"VEER_ADMIN_TOKEN": "t"}).returncode == 0


def test_an_admin_listener_off_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    said = refusal([], tmp_path, {"admin": {"listen": "0.0.0.0:2"}})
    assert "admin.listen 0.0.0.0:2 is not a loopback address and no admin token" in said


def test_a_state_directory_that_cannot_be_written_is_refused_by_both(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through permissions: use a filesystem that refuses
        target = "/sys/veer-check/state.json"
        expected = "cannot write in /sys"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "state.json")
        expected = f"cannot write in {locked}"
    said = refusal([], tmp_path, {"state": {"path": target}})
    assert f"state.path {target}: {expected}" in said
    afile = tmp_path / "afile"
    afile.write_text("x")
    said = refusal([], tmp_path, {"state": {"path": str(afile / "state.json")}})
    assert f"{afile} is not a directory" in said


@pytest.mark.parametrize("extra", [{"weights": {"new": 250}}, {"rollout": {"plan": []}}])
def test_a_bad_config_still_names_the_key(tmp_path: Path, extra: dict[str, Any]) -> None:
    cfg = write(tmp_path / "bad.yaml", extra)
    out = veer("check", "--config", str(cfg))
    assert out.returncode == 2 and f"{cfg}: " in out.stderr and out.stdout == ""
