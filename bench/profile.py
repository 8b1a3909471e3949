"""Where veer's CPU goes under load: py-spy samples veer while wrk drives it.

Not part of the test suite. Needs wrk, nginx and py-spy (``bench/setup.sh``). The same
set-up as baseline.py (veer pinned to one core, nginx and wrk on the other, c=32); prints
the functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), in percent of all samples, and keeps the raw stacks for a flame graph.

    .venv/bin/python bench/profile.py                 # 10 s at c=32, recording on
    .venv/bin/python bench/profile.py --no-recording  # the same with recording off
    .venv/bin/python bench/profile.py --perf          # perf: kernel vs interpreter vs C

py-spy sees Python frames (a syscall's time shows under the Python function that made
it); ``--perf`` samples the CPU instead (``perf record -e cpu-clock``), splitting the time
between the kernel, libpython, llhttp and uvloop, without Python frames.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
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
    args = ap.parse_args()
    tools = {t: shutil.which(t, path=f"{Path(sys.executable).parent}:/usr/bin:/usr/sbin")
             for t in ("wrk", "nginx", "taskset", "perf" if args.perf else "py-spy")}
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
        with (tmp / "veer.log").open("wb") as out:
            veer = subprocess.Popen(["taskset", "-c", "0", veer_bin, "run", "--config",
                                     str(tmp / "veer.yaml")], stdout=out, stderr=out)
        wait_listening(ports["port"], veer, "veer", tmp / "veer.log")
        url = f"http://127.0.0.1:{ports['port']}/"
        wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", "--latency",
               "-s", str(tmp / "req.lua")]
        subprocess.run([*wrk, "-d2s", url], capture_output=True, check=True)  # warm up
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
