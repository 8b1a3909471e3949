"""First throughput baseline: wrk -> nginx directly vs wrk -> veer -> nginx.

Not part of the test suite. Needs ``wrk`` and ``nginx`` (Debian: ``apt-get install -y wrk
nginx-light``). Everything listens on 127.0.0.1; veer is pinned to one core, nginx and wrk
to another. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
BODY = ("veer bench payload " * 6)[:99] + "\n"  # exactly 100 bytes
NGINX_CONF = """daemon off; master_process off; worker_processes 1;
error_log {tmp}/error.log; pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off; keepalive_requests 100000;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{original}; location / {{ return 200 "{body}"; }} }}
  server {{ listen 127.0.0.1:{new}; location / {{ return 200 "{body}"; }} }}
}}
"""
VEER_CONF = """listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin}"}}
upstreams:
  original: {{endpoints: ["http://127.0.0.1:{original}"]}}
  new: {{endpoints: ["http://127.0.0.1:{new}"]}}
routing: {{user_key: ["header:X-User-Id"]}}
weights: {{new: 10}}
timeouts: {{drain: 2s}}
recording: {{enabled: {recording}}}
"""
# 1000 pre-formatted requests with random user ids, built once; request() only cycles.
WRK_LUA = """local reqs, n, i = {}, 1000, 0
function init(args)
  math.randomseed(20240601)
  for k = 1, n do
    reqs[k] = wrk.format("GET", "/", {["X-User-Id"] = "user-" .. math.random(1, 1000000)})
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
"""
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def die(msg: str) -> NoReturn:
    print(f"baseline: {msg}", file=sys.stderr)
    raise SystemExit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    die(f"{what} not listening on 127.0.0.1:{port} after 15s:\n{tail(log)}")


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsable wrk time {text!r}")
    return round(float(m[1]) * UNITS_MS[m[2]], 6)


def parse_wrk(out: str) -> dict[str, Any]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"cannot parse wrk output:\n{out}")
    problems = [ln.strip() for ln in out.splitlines()
                if ln.strip().startswith(("Socket errors:", "Non-2xx or 3xx responses:"))]
    return {"rps": float(rps[1]), "p50_ms": to_ms(p50[1]), "p99_ms": to_ms(p99[1]),
            "requests": int(total[1]), "problems": problems}


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU seconds the process has used (0 for no process)."""
    if proc is None:
        return 0.0
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@contextmanager
def alone(proc: subprocess.Popen[bytes] | None,
          others: Iterable[subprocess.Popen[bytes] | None]) -> Iterator[None]:
    """Pause (SIGSTOP) every other system under test while ``proc`` is measured: they share
    its core, and their timers (sweeps, controller ticks) would land in its latencies."""
    paused = [p for p in others if p is not None and p is not proc and p.poll() is None]
    for p in paused:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in paused:
            p.send_signal(signal.SIGCONT)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per target")
    ap.add_argument("--against", metavar="GIT_REF[,GIT_REF...]", default="",
                    help="also run veer as of each GIT_REF (recording on) as target "
                         "'veer@GIT_REF', so each step is measured in the same run (a "
                         "commit with setup.py is compiled with mypyc first, as it installs)")
    args = ap.parse_args()
    if min(args.duration, args.connections, args.reps) < 1:
        ap.error("--duration, --connections and --reps must be at least 1")
    tools = {t: shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin")
             for t in ("wrk", "nginx", "taskset")}
    missing = [t for t, path in tools.items() if path is None]
    if missing:
        die(f"missing {', '.join(missing)}; install with: sudo apt-get install -y wrk "
            "nginx-light (taskset is in util-linux)")
    veer = Path(sys.executable).with_name("veer")
    veer_bin = str(veer) if veer.exists() else shutil.which("veer")
    if veer_bin is None:
        die("veer not found; run with the project venv: .venv/bin/python bench/baseline.py")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        die("needs 2 CPUs: veer on one, nginx and wrk on the other")
    pin_veer = ["taskset", "-c", str(cpus[0])]
    pin_load = ["taskset", "-c", str(cpus[1])]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below

    tmp = Path(tempfile.mkdtemp(prefix="veer-bench-"))
    nginx: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    norec: subprocess.Popen[bytes] | None = None
    refs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {"original": free_port(), "new": free_port(), "veer": free_port(),
                 "veer-norec": free_port()}
        admin_port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, body=BODY, **ports))
        (tmp / "veer.yaml").write_text(VEER_CONF.format(
            port=ports["veer"], admin=admin_port, recording="true", **ports))
        (tmp / "veer-norec.yaml").write_text(VEER_CONF.format(
            port=ports["veer-norec"], admin=free_port(), recording="false", **ports))
        (tmp / "req.lua").write_text(WRK_LUA)
        nginx_log, veer_log = tmp / "nginx.out", tmp / "veer.log"
        with nginx_log.open("wb") as out:
            nginx = subprocess.Popen(
                [*pin_load, str(tools["nginx"]), "-p", str(tmp), "-e", str(tmp / "error.log"),
                 "-c", str(tmp / "nginx.conf")], stdout=out, stderr=subprocess.STDOUT)
        wait_listening(ports["original"], nginx, "nginx", tmp / "error.log")
        wait_listening(ports["new"], nginx, "nginx", tmp / "error.log")
        with veer_log.open("wb") as out:
            proxy = subprocess.Popen([*pin_veer, veer_bin, "run", "--config",
                                      str(tmp / "veer.yaml")], stdout=out,
                                     stderr=subprocess.STDOUT)
        wait_listening(ports["veer"], proxy, "veer", veer_log)
        with (tmp / "veer-norec.log").open("wb") as out:
            norec = subprocess.Popen([*pin_veer, veer_bin, "run", "--config",
                                      str(tmp / "veer-norec.yaml")], stdout=out,
                                     stderr=subprocess.STDOUT)
        wait_listening(ports["veer-norec"], norec, "veer (recording off)",
                       tmp / "veer-norec.log")
        against = [r for r in args.against.split(",") if r]
        for git_ref in against:
            ports[f"veer@{git_ref}"] = free_port()
            refs.append(start_ref(git_ref, tmp, pin_veer, ports[f"veer@{git_ref}"], ports))
        metrics_url = f"http://127.0.0.1:{admin_port}/metrics"
        scrapes: list[float] = []

        wrk_args = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                    "-s", str(tmp / "req.lua")]
        targets = {"direct": ports["original"], "veer": ports["veer"],
                   "veer-norec": ports["veer-norec"]}
        targets.update({f"veer@{r}": ports[f"veer@{r}"] for r in against})
        procs: dict[str, subprocess.Popen[bytes] | None] = {
            "direct": None, "veer": proxy, "veer-norec": norec, "veer-scraped": proxy,
            **{f"veer@{r}": p for r, p in zip(against, refs, strict=True)}}
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
        # Scraping blocks veer's loop for a few ms each time, which shows in p99: it gets
        # its own run after the interleaved ones, not mixed into veer's row.
        plan = [(rep, name) for rep in range(args.reps) for name in targets]
        plan.append((args.reps - 1, "veer-scraped"))
        targets["veer-scraped"] = ports["veer"]
        runs["veer-scraped"] = []
        for rep, name in plan:
            port = targets[name]
            cmd = [*pin_load, *wrk_args, f"http://127.0.0.1:{port}/"]
            scraping = threading.Event()
            scraper = None
            if name == "veer-scraped":  # time /metrics while both variants are busy
                scraper = threading.Thread(target=scrape_loop,
                                           args=(metrics_url, scraping, scrapes))
                scraper.start()
            target = procs[name]
            cpu_before = cpu_seconds(target)
            try:
                with alone(target, procs.values()):
                    res = subprocess.run(cmd, capture_output=True, text=True,
                                         timeout=args.duration + 60, check=False)
            finally:
                scraping.set()
                if scraper is not None:
                    scraper.join()
            if res.returncode != 0:
                die(f"wrk failed ({res.returncode}): {res.stderr or res.stdout}")
            run = parse_wrk(res.stdout)
            if target is not None:  # veer's own CPU (user + system) per request it served
                run["cpu_us"] = (cpu_seconds(target) - cpu_before) * 1e6 / max(1, run["requests"])
            runs[name].append(run)
            print(f"rep {rep + 1}/{args.reps} {name:6} {run['rps']:10.1f} req/s  "
                  f"p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms"
                  + (f"  cpu {run['cpu_us']:.1f} us/req" if "cpu_us" in run else "")
                  + "".join(f"  [{p}]" for p in run["problems"]), file=sys.stderr)
            if proxy.poll() is not None:
                die(f"veer exited with {proxy.returncode}:\n{tail(veer_log)}")
        warnings = [ln for ln in veer_log.read_text(errors="replace").splitlines()
                    if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
        summary = {name: {k: statistics.median(r.get(k, float("nan")) for r in rs)
                          for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
                   for name, rs in runs.items()}
        commands = {
            "wrk_command": shlex.join([*pin_load, *wrk_args]) + " http://127.0.0.1:PORT/",
            "veer_command": shlex.join([*pin_veer, veer_bin, "run", "--config",
                                        str(tmp / "veer.yaml")]),
        }
        idle = [timed_get(metrics_url) for _ in range(20)]
        report(args, runs, summary, {k: v.replace(str(tmp), "$TMP")
                                     for k, v in commands.items()}, warnings,
               {"under_load_ms": scrapes, "idle_ms": idle})
        return 0
    finally:
        stop(norec)
        for ref in refs:
            stop(ref)
        stop(proxy)
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)


def start_ref(git_ref: str, tmp: Path, pin: list[str], port: int,
              ports: dict[str, int]) -> subprocess.Popen[bytes]:
    """veer as of ``git_ref`` (exported with git archive), on the same core and backends."""
    src = Path(tempfile.mkdtemp(prefix="ref-", dir=tmp))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", git_ref],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        die(f"git archive {git_ref} failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    if (src / "setup.py").exists():
        # The same build as this checkout's: its hot path compiled in place (about a
        # minute). A commit from before setup.py runs pure Python, as it did then.
        print(f"veer@{git_ref}: compiling its hot path with mypyc", file=sys.stderr)
        built = subprocess.run([sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
                               cwd=src, capture_output=True, text=True, check=False,
                               env={**os.environ, "VEER_BUILD": "mypyc"})
        if built.returncode != 0:
            die(f"veer@{git_ref}: compiling failed:\n{built.stderr[-3000:]}")
    conf = src / "veer-bench.yaml"
    conf.write_text(VEER_CONF.format(**{**ports, "port": port}, admin=free_port(),
                                     recording="true"))
    log = src / "veer-bench.log"
    # PYTHONPATH puts the exported tree ahead of the editable install of this checkout.
    env = {**os.environ, "PYTHONPATH": str(src)}
    with log.open("wb") as out:
        proc = subprocess.Popen([*pin, sys.executable, "-c",
                                 "import sys; from admin.cli import main; sys.exit(main())",
                                 "run", "--config", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=src)
    wait_listening(port, proc, f"veer@{git_ref}", log)
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", git_ref],
                         capture_output=True, text=True, check=False).stdout.strip()
    build = "mypyc" if (src / "setup.py").exists() else "pure"
    print(f"veer@{git_ref} is {sha} ({build})", file=sys.stderr)
    return proc


def timed_get(url: str) -> float:
    """Milliseconds to fetch ``url`` whole."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000


def scrape_loop(url: str, stop_event: threading.Event, out: list[float]) -> None:
    """Scrape every 0.5 s, as a busy Prometheus would, until told to stop."""
    while not stop_event.wait(0.5):
        out.append(timed_get(url))


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]],
           summary: dict[str, dict[str, float]], commands: dict[str, str],
           warnings: list[str], scrapes: dict[str, list[float]]) -> None:
    now = dt.datetime.now().astimezone()
    direct = summary["direct"]["rps"]
    info: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"), "cpu": cpu_model(),
        "python": platform.python_version(), "platform": platform.platform(),
        "command": shlex.join([sys.executable, *sys.argv]), **commands,
        "duration_s": args.duration, "connections": args.connections, "reps": args.reps,
        "veer_log_warnings": warnings[:20],
    }
    lines = ["| target | req/s (median) | p50 ms | p99 ms | CPU us/req | ratio to direct "
             "| errors |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, s in summary.items():
        problems = sorted({p for r in runs[name] for p in r["problems"]}) or ["none"]
        ratio = f"{s['rps'] / direct:.3f}" if direct else "n/a"
        cpu = "-" if s["cpu_us"] != s["cpu_us"] else f"{s['cpu_us']:.1f}"  # NaN: not a proxy
        lines.append(f"| {name} | {s['rps']:.1f} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} "
                     f"| {cpu} | {ratio} | {'; '.join(problems)} |")
    for name in runs:
        if name.startswith("veer@"):  # paired by rep, so slow drifts of the VM cancel out
            pairs = list(zip(runs["veer"], runs[name], strict=True))
            gains = [a["rps"] / b["rps"] for a, b in pairs]
            costs = [a["cpu_us"] / b["cpu_us"] for a, b in pairs]
            lines.append(f"\nveer vs {name}: req/s x{statistics.median(gains):.3f} (median of "
                         f"per-rep ratios: {', '.join(f'{g:.3f}' for g in gains)}); CPU per "
                         f"request x{statistics.median(costs):.3f} "
                         f"({', '.join(f'{c:.3f}' for c in costs)})")
    rec, norec = summary["veer"]["rps"], summary["veer-norec"]["rps"]
    cost_us = (1e6 / rec - 1e6 / norec) if rec and norec else float("nan")
    lines.append("")
    lines.append(f"Recording cost: {100 * (1 - rec / norec):.1f}% of throughput, "
                 f"{cost_us:.2f} us of CPU per request (1/rps with minus without).")
    for key, values in scrapes.items():
        if values:
            lines.append(f"/metrics fetch {key.replace('_ms', '').replace('_', ' ')}: median "
                         f"{statistics.median(values):.2f} ms, max {max(values):.2f} ms "
                         f"({len(values)} scrapes)")
    info["metrics_scrape_ms"] = scrapes
    print("\n".join(lines) + "\n")
    for key in ("date", "cpu", "python", "platform", "command", "wrk_command", "veer_command"):
        print(f"- {key}: `{info[key]}`")
    print(f"- veer log warnings/errors: {len(warnings)}"
          + "".join(f"\n  - `{w}`" for w in warnings[:5]))
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"baseline-{now:%Y-%m-%d-%H%M%S}.json"
    path.write_text(json.dumps({**info, "median": summary, "runs": runs}, indent=2) + "\n")
    print(f"- results: `{path.relative_to(REPO)}`")

if __name__ == "__main__":
    sys.exit(main())
