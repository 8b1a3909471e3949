"""Latency veer adds at a moderate, fixed rate: direct to nginx vs through veer, same client.

wrk measures throughput at saturation; this measures the other end: a paced
client (default 1,000 requests/s over 8 keep-alive connections) and the p50 /
p99 it sees going straight to an nginx backend and through veer, interleaved.
The difference is what veer adds. The client runs on one core, nginx on the
same, veer on the other. Needs nginx (bench/setup.sh). Not part of the tests.

    .venv/bin/python bench/added_latency.py [--rate 1000] [--seconds 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType


def _baseline() -> ModuleType:
    """bench/ is not a package: load baseline.py's helpers (nginx config, ports, stop)."""
    spec = importlib.util.spec_from_file_location("baseline", Path(__file__).with_name(
        "baseline.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def paced(port: int, rate: float, seconds: float, conns: int) -> list[float]:
    """Latencies (ms) of GETs sent at ``rate`` per second over ``conns`` connections."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    interval = conns / rate  # each connection sends every `interval` seconds
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nX-User-Id: user-%d\r\n\r\n"

    async def one(i: int) -> None:
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
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1000)
            n += 1
        writer.close()

    await asyncio.gather(*(one(i) for i in range(conns)))
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second in all")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    base = _baseline()
    nginx_bin = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    veer_bin = Path(sys.executable).with_name("veer")
    if nginx_bin is None or not veer_bin.exists():
        base.die("needs nginx (bench/setup.sh) and the project venv's veer")
    assert nginx_bin is not None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        base.die("needs 2 CPUs")
    os.sched_setaffinity(0, {cpus[1]})  # this client shares a core with nginx
    tmp = Path(tempfile.mkdtemp(prefix="veer-latency-"))
    nginx = veer = None
    try:
        ports = {"original": base.free_port(), "new": base.free_port(), "veer": base.free_port()}
        (tmp / "nginx.conf").write_text(base.NGINX_CONF.format(tmp=tmp, body=base.BODY, **ports))
        (tmp / "veer.yaml").write_text(base.VEER_CONF.format(
            port=ports["veer"], admin=base.free_port(), recording="true", **ports))
        with (tmp / "nginx.out").open("wb") as out:
            nginx = subprocess.Popen(["taskset", "-c", str(cpus[1]), nginx_bin, "-p", str(tmp),
                                      "-e", str(tmp / "error.log"), "-c",
                                      str(tmp / "nginx.conf")], stdout=out,
                                     stderr=subprocess.STDOUT)
        base.wait_listening(ports["original"], nginx, "nginx", tmp / "error.log")
        with (tmp / "veer.log").open("wb") as out:
            veer = subprocess.Popen(["taskset", "-c", str(cpus[0]), str(veer_bin), "run",
                                     "--config", str(tmp / "veer.yaml")], stdout=out,
                                    stderr=subprocess.STDOUT)
        base.wait_listening(ports["veer"], veer, "veer", tmp / "veer.log")
        results: dict[str, list[tuple[float, float]]] = {"direct": [], "veer": []}
        for rep in range(args.reps):
            for name, port in (("direct", ports["original"]), ("veer", ports["veer"])):
                asyncio.run(paced(port, args.rate, 1.0, args.connections))  # warm up
                lat = asyncio.run(paced(port, args.rate, args.seconds, args.connections))
                q = statistics.quantiles(lat, n=100)
                results[name].append((q[49], q[98]))
                print(f"rep {rep + 1} {name:6} n={len(lat)} p50 {q[49]:.3f} ms "
                      f"p99 {q[98]:.3f} ms", file=sys.stderr)
        med = {k: (statistics.median(p for p, _ in v), statistics.median(p for _, p in v))
               for k, v in results.items()}
        print(f"| at {args.rate:g} req/s | p50 ms | p99 ms |\n|---|---:|---:|")
        for name, (p50, p99) in med.items():
            print(f"| {name} | {p50:.3f} | {p99:.3f} |")
        print(f"| veer adds | {med['veer'][0] - med['direct'][0]:.3f} | "
              f"{med['veer'][1] - med['direct'][1]:.3f} |")
        print(f"\n- {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, {base.cpu_model()}, "
              f"{args.connections} connections, {args.seconds:g} s x {args.reps} reps")
        return 0
    finally:
        base.stop(veer)
        base.stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
