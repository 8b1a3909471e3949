"""Where veer's CPU goes under load: py-spy samples veer while wrk drives it.

Not part of the test suite. Needs wrk, nginx and py-spy (``bench/setup.sh``). The same
set-up as baseline.py (veer pinned to one core, nginx and wrk on the other, c=32); prints
the functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), in percent of all samples, and keeps the raw stacks for a flame graph.

    .venv/bin/python bench/profile.py                 # 10 s at c=32, recording on
    .venv/bin/python bench/profile.py --no-recording  # the same with recording off
    .venv/bin/python bench/profile.py --perf          # perf: kernel vs interpreter vs C
    .venv/bin/python bench/profile.py --calls         # Python calls per request
    VEER_PURE_PYTHON=1 .venv/bin/python bench/profile.py --calls   # ... of the pure build

py-spy sees Python frames (a syscall's time shows under the Python function that made
it); ``--perf`` samples the CPU instead (``perf record -e cpu-clock``), splitting the time
between the kernel, libpython, llhttp and uvloop, without Python frames.

``--calls`` counts, with ``sys.setprofile`` inside veer, the calls per request over a
fixed stretch of wrk's load: Python functions run by the interpreter (``call``) and C
functions they call (``c_call``: builtins, uvloop, httptools). A module mypyc compiled
runs as C: its functions, and what they call, are not seen, so for the compiled build the
count is what is still interpreted.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ is not a package; run as a script, bench/ is sys.path[0].
from baseline import (
    BODY,
    NGINX_CONF,
    REPO,
    VEER_CONF,
    WRK_LUA,
    die,
    free_port,
    stop,
    wait_listening,
)

# Runs veer with a profile hook that counts calls between SIGRTMIN+1 (start) and SIGRTMIN+2 (stop
# and write the counts as JSON to $VEER_CALLS_OUT). The hook runs all along (it slows veer
# down), and counts only in between.
CALLS_WRAPPER = """
import collections, json, os, signal, sys
counts = collections.Counter()
active = False
def hook(frame, event, arg):
    if not active:
        return
    if event == "call":
        code = frame.f_code
        counts["py " + os.path.basename(code.co_filename) + ":" + code.co_qualname] += 1
    elif event == "c_call":
        counts["c " + getattr(arg, "__qualname__", type(arg).__name__)] += 1
def start(*_):
    global active
    counts.clear()
    active = True
def stop(*_):
    global active
    active = False
    with open(os.environ["VEER_CALLS_OUT"], "w") as f:
        json.dump(counts, f)
signal.signal(signal.SIGRTMIN + 1, start)
signal.signal(signal.SIGRTMIN + 2, stop)
# Set here, at the top: set later (in a signal handler) it would not reach the frames the
# event loop runs (3.11 keeps the flag per C-level frame).
sys.setprofile(hook)
from admin.cli import main
sys.exit(main())
"""
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``file.py:func`` (line numbers merged)."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{Path(m['file']).name}:{m['func']}"


def summarise(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, self samples and inclusive samples per function, from py-spy's raw
    (collapsed) output: one ``frame;frame;...;leaf count`` line per distinct stack."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    return total, own, incl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-recording", action="store_true")
    ap.add_argument("--perf", action="store_true", help="sample with perf, not py-spy")
    ap.add_argument("--calls", action="store_true",
                    help="count the Python calls per request (sys.setprofile), no sampling")
    args = ap.parse_args()
    sampler = ["perf"] if args.perf else [] if args.calls else ["py-spy"]
    tools = {t: shutil.which(t, path=f"{Path(sys.executable).parent}:/usr/bin:/usr/sbin")
             for t in ("wrk", "nginx", "taskset", *sampler)}
    missing = [t for t, p in tools.items() if p is None]
    if missing:
        die(f"missing {', '.join(missing)}; run bench/setup.sh")
    veer_bin = str(Path(sys.executable).with_name("veer"))
    tmp = Path(tempfile.mkdtemp(prefix="veer-profile-"))
    nginx = veer = None
    try:
        ports = {"original": free_port(), "new": free_port(), "port": free_port()}
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, body=BODY, **ports))
        (tmp / "veer.yaml").write_text(VEER_CONF.format(
            admin=free_port(), recording="false" if args.no_recording else "true", **ports))
        (tmp / "req.lua").write_text(WRK_LUA)
        nginx = subprocess.Popen(["taskset", "-c", "1", str(tools["nginx"]), "-p", str(tmp),
                                  "-c", str(tmp / "nginx.conf")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        wait_listening(ports["original"], nginx, "nginx", tmp / "error.log")
        command = ([sys.executable, "-c", CALLS_WRAPPER] if args.calls else [veer_bin])
        env = {**os.environ, "VEER_CALLS_OUT": str(tmp / "calls.json")}
        with (tmp / "veer.log").open("wb") as out:
            veer = subprocess.Popen(["taskset", "-c", "0", *command, "run", "--config",
                                     str(tmp / "veer.yaml")], stdout=out, stderr=out,
                                    env=env, cwd=REPO)
        wait_listening(ports["port"], veer, "veer", tmp / "veer.log")
        url = f"http://127.0.0.1:{ports['port']}/"
        wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", "--latency",
               "-s", str(tmp / "req.lua")]
        subprocess.run([*wrk, "-d2s", url], capture_output=True, check=True)  # warm up
        if args.calls:
            count_calls(veer, [*wrk, f"-d{args.seconds}s", url], tmp / "calls.json", args.top)
            return 0
        load = subprocess.Popen([*wrk, f"-d{args.seconds + 2}s", url], stdout=subprocess.PIPE,
                                text=True)
        if args.perf:
            perf_report(str(tools["perf"]), veer.pid, args, tmp)
            wrk_out, _ = load.communicate(timeout=args.seconds + 60)
            rps = re.search(r"^Requests/sec:\s+([\d.]+)", wrk_out, re.M)
            print(f"\nwrk c={args.connections}: {rps[1] if rps else '?'} req/s while sampled")
            return 0
        raw = tmp / "stacks.txt"
        spy = subprocess.run([str(tools["py-spy"]), "record", "--pid", str(veer.pid),
                              "--rate", str(args.rate), "--duration", str(args.seconds),
                              "--format", "raw", "--output", str(raw)],
                             capture_output=True, text=True, check=False)
        wrk_out, _ = load.communicate(timeout=args.seconds + 60)
        if spy.returncode != 0 or not raw.exists():
            die(f"py-spy failed ({spy.returncode}): {spy.stderr.strip()}")
        total, own, incl = summarise(raw.read_text())
        if total == 0:
            die("py-spy recorded no samples")
        rps = re.search(r"^Requests/sec:\s+([\d.]+)", wrk_out, re.M)
        print(f"{total} samples at {args.rate} Hz over {args.seconds} s; wrk c="
              f"{args.connections}: {rps[1] if rps else '?'} req/s (sampling slows veer)")
        for title, counter in (("self", own), ("inclusive", incl)):
            print(f"\n| {title} % | function |\n|---:|---|")
            for name, n in counter.most_common(args.top):
                print(f"| {100 * n / total:.1f} | `{name}` |")
        out_dir = REPO / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = out_dir / f"profile-{dt.datetime.now(dt.UTC):%Y-%m-%d-%H%M%S}.txt"
        shutil.copy(raw, kept)
        print(f"\nraw stacks (flamegraph.pl or speedscope): {kept.relative_to(REPO)}")
        return 0
    finally:
        stop(veer)
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)


def count_calls(veer: subprocess.Popen[bytes], wrk: list[str], out: Path, top: int) -> None:
    """Calls per request while ``wrk`` runs: counting starts before it and stops after,
    so the idle moments at both ends add a few timer calls, not requests."""
    veer.send_signal(signal.SIGRTMIN + 1)
    time.sleep(0.2)  # the handler runs on veer's next trip through the loop
    res = subprocess.run(wrk, capture_output=True, text=True, check=True)
    veer.send_signal(signal.SIGRTMIN + 2)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not out.exists():
        die("veer wrote no call counts (was it killed?)")
    time.sleep(0.2)  # let the write finish
    counts: dict[str, int] = json.loads(out.read_text())
    found = re.search(r"^\s*(\d+) requests in", res.stdout, re.M)
    if found is None:
        die(f"no request count in wrk's output:\n{res.stdout}")
    requests = int(found[1])
    py = sum(n for k, n in counts.items() if k.startswith("py "))
    c = sum(n for k, n in counts.items() if k.startswith("c "))
    import proxy

    print(f"build: {proxy.describe_build()}; {requests} requests (wrk {' '.join(wrk[3:6])})")
    print(f"\n| per request | calls |\n|---|---:|\n| Python functions (interpreted) | "
          f"{py / requests:.1f} |\n| C functions called from them | {c / requests:.1f} |")
    print("\n| calls per request | function |\n|---:|---|")
    for name, n in collections.Counter(counts).most_common(top):
        print(f"| {n / requests:.2f} | `{name}` |")


def perf_report(perf: str, pid: int, args: argparse.Namespace, tmp: Path) -> None:
    """Sample ``pid`` with perf for ``args.seconds``; print the share per binary and the
    top symbols (kernel symbols need kernel.perf_event_paranoid <= 1 or root)."""
    data = tmp / "perf.data"
    rec = subprocess.run([perf, "record", "-e", "cpu-clock", "-F", "2000", "-p", str(pid),
                          "-o", str(data), "--", "sleep", str(args.seconds)],
                         capture_output=True, text=True, check=False)
    if rec.returncode != 0:
        die(f"perf record failed ({rec.returncode}): {rec.stderr.strip()}")
    for key, top in (("dso", 10), ("sym", args.top)):
        rep = subprocess.run([perf, "report", "-i", str(data), "--sort", key, "--stdio"],
                             capture_output=True, text=True, check=False)
        rows = [ln.strip().split(None, 1) for ln in rep.stdout.splitlines()
                if ln.strip() and not ln.startswith("#")]
        print(f"\n| % of veer's CPU | {key} |\n|---:|---|")
        for pct, name in rows[:top]:
            print(f"| {pct.rstrip('%')} | `{name.strip()}` |")


if __name__ == "__main__":
    sys.exit(main())
