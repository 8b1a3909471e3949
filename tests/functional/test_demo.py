"""``veer demo`` as a real subprocess: the rollout advances, then rolls back by itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def demo(*args: str, timeout: float) -> str:
    proc = subprocess.run([sys.executable, "-m", "admin.cli", "demo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_demo_rollout_advances_then_rolls_back_on_degradation() -> None:
    out = demo("--seconds", "30", "--degrade-at", "24", timeout=90)
    events = re.findall(r"event: (\S+) ", out)
    assert events == ["advance", "advance", "advance", "complete", "rollback"], out
    assert re.search(r"new\s+0\.0%\s+full/rolled-back", out), out
    assert "client failures 0" in out, out
    # each second shows the phase, the weight and both sides' rate, error rate and p99
    assert re.search(r"canary/progressing\s+original\s+\d+ req/s err\s+[\d.]+% p99\s+[\d.]+ ms"
                     r"\s+new\s+\d+ req/s", out), out


def test_demo_with_a_fixed_weight_splits_both_ways() -> None:
    out = demo("--seconds", "3", "--weight", "10", timeout=30)
    lines = re.findall(r"^\s+\d+s  new  10\.0%\s+original\s+(\d+) req/s.*new\s+(\d+) req/s", out,
                       re.M)
    assert len(lines) >= 3, out
    assert all(int(o) > 0 and int(n) > 0 for o, n in lines[1:]), out


def test_demo_experiment_reads_outcomes_and_decides() -> None:
    out = demo("--experiment", "--seconds", "15", "--rate", "300", timeout=60)
    looks = re.findall(r"experiment demo-ranking: users (\d+)/(\d+)\s+SRM (\S+)\s+accuracy "
                       r"([+-][\d.]+%) \[([+-][\d.]+%), ([+-][\d.]+%)\]", out)
    assert len(looks) >= 10, out
    assert all(srm == "ok" for _, _, srm, *_ in looks), out
    assert all(int(o) > 0 and int(n) > 0 for o, n, *_ in looks), out
    # the backends report accuracy 0.80 and 0.83: a +3.75% lift the interval must hold
    *_, lo, hi = looks[-1]
    assert float(lo[:-1]) < 3.75 < float(hi[:-1]), looks[-1]
    assert re.search(r"event: experiment-decision keep running -> ship: confidently better: "
                     r"accuracy", out), out
    assert "client failures 0" in out, out
