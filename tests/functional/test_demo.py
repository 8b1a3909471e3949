"""``veer demo`` end to end: a real subprocess, real sockets, a sticky split on both variants."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_splits_traffic_and_keeps_users_sticky() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "admin.cli", "demo", "--seconds", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(re.findall(r"^\s*\d+\.\ds  weight  10\.00%", out, re.M)) >= 3, out
    summary = re.search(r"original (\d+) \(errors (\d+)\), new (\d+) \(errors (\d+)\)", out)
    assert summary is not None, out
    orig, orig_err, new, new_err = (int(g) for g in summary.groups())
    assert orig > 0 and new > 0, out
    assert orig_err == 0 and new_err == 0, out
    assert "client failures 0" in out, out
    assert re.search(r"\b0 users switched variant", out), out
