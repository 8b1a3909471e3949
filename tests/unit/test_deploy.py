"""The deploy examples (admin/deploy/) and the observability files they mount.

What is checked, without a cluster and without pulling an image:

- every Kubernetes document against the API's JSON schema for one fixed version
  (kubernetes-validate, strict: an unknown field fails, and so does a kind it has no
  schema for);
- every veer config the examples hold (the ConfigMaps' ``veer.yaml``, the compose
  example's file) by veer's own loader, then by preflight with the token file and state
  directory pointed at files that exist here;
- the wiring between them: the config mounted where the image reads it, the token file
  inside the mounted Secret, probes on the admin port, Services to the data port,
  upstreams that exist, Redis reachable by its Service, scraping annotations;
- the compose file with ``docker-compose config``; the Prometheus configs with
  ``promtool check config`` (with veer's rules laid out where they are mounted);
- the dashboard's queries as PromQL, its variables and layout; the alert rules' behaviour
  with ``promtool test rules``.

Each check is also shown to fail on a broken copy.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.config.load import load
from proxy.config.model import Config
from proxy.config.reader import ConfigError
from proxy.runtime.preflight import preflight
from tests.sysdeps import require_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "admin" / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
OBSERVABILITY = ROOT / "admin" / "observability"
RULES = OBSERVABILITY / "prometheus-rules.yml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
KUBERNETES_VERSION = "1.30.0"
CONFIG_DIR = "/etc/veer"  # the image runs: veer run --config /etc/veer/veer.yaml
IMAGE_UID = 10001  # the image's veer user (Dockerfile)

Doc = dict[str, Any]


# -- helpers ------------------------------------------------------------------------------


def kubernetes_validate() -> ModuleType:
    """The kubernetes_validate module (the test extra): skip where missing, fail in CI."""
    try:
        import kubernetes_validate as module  # type: ignore[import-untyped]
    except ImportError:
        reason = "kubernetes-validate not installed: .venv/bin/pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return module  # type: ignore[no-any-return]


def documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def schema_problem(doc: Doc) -> str | None:
    """Why the Kubernetes API would refuse ``doc``, or None."""
    kv = kubernetes_validate()
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        return f"{where}: {'.'.join(str(p) for p in exc.path)}: {exc.message}"
    except kv.SchemaNotFoundError as exc:
        return f"{where}: {exc.message}"  # the CLI only warns: here it fails
    return None


def veer_config(text: str, tmp_path: Path, name: str = "veer.yaml") -> Config:
    """``text`` through veer's loader, as ``veer run`` reads it (ConfigError if refused)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load(path)


def preflight_here(cfg: Config, tmp_path: Path) -> list[str]:
    """What ``run`` would refuse at start, with the files the config names (the mounted
    token, the state directory) put where they exist here."""
    admin = cfg.admin
    if admin.token_file is not None:
        token = tmp_path / "admin-token"
        token.write_text("t0ken\n", encoding="utf-8")
        admin = dataclasses.replace(admin, token_file=str(token))
    state = cfg.state
    if state.path is not None:
        state = dataclasses.replace(state, path=str(tmp_path / "state" / "state.json"))
    return preflight(dataclasses.replace(cfg, admin=admin, state=state))


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"] == name), None)


def veer_configmaps(docs: list[Doc]) -> list[Doc]:
    return [d for d in by_kind(docs, "ConfigMap") if "veer.yaml" in d.get("data", {})]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_of(value: int | str, container: Doc) -> int | None:
    """A probe's or Service's port (a number, or a container port's name) as a number."""
    if isinstance(value, int):
        return value
    return next((p["containerPort"] for p in container.get("ports", [])
                 if p.get("name") == value), None)


def mount_for(path: str, container: Doc) -> Doc | None:
    """The container's volume mount that holds ``path`` (the deepest one)."""
    holding = [m for m in container.get("volumeMounts", [])
               if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    return max(holding, key=lambda m: len(m["mountPath"]), default=None)


def veer_pod_problems(docs: list[Doc], configmap: Doc, cfg: Config) -> list[str]:
    """How the Deployment that runs veer with ``configmap`` is wired wrong (empty: it is
    not). The parts every example shares: config, token, probes, Service, scraping,
    non-root, resources, state."""
    problems: list[str] = []
    cm = configmap["metadata"]["name"]
    found = [(d, v["name"]) for d in by_kind(docs, "Deployment")
             for v in d["spec"]["template"]["spec"].get("volumes", [])
             if v.get("configMap", {}).get("name") == cm]
    if len(found) != 1:
        return [f"ConfigMap {cm}: mounted by {len(found)} Deployments, not 1"]
    dep, volume = found[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    veer = next((c for c in spec["containers"]
                 if any(m["name"] == volume for m in c.get("volumeMounts", []))), None)
    if veer is None:
        return [f"ConfigMap {cm}: no container mounts it"]
    held = mount_for(f"{CONFIG_DIR}/veer.yaml", veer)
    if held is None or held["name"] != volume or held["mountPath"] != CONFIG_DIR:
        problems.append(f"{veer['name']}: ConfigMap {cm} is not mounted at {CONFIG_DIR}")
    if "command" in veer or "args" in veer:
        problems.append(f"{veer['name']}: overrides the image's veer run --config entrypoint")
    # The admin token: a file of the mounted Secret.
    if cfg.admin.token_file is None:
        problems.append("admin.token_file is not set (the admin listener is off loopback)")
    else:
        mount = mount_for(cfg.admin.token_file, veer)
        secret_name = volumes.get(mount["name"], {}).get("secret", {}).get("secretName") \
            if mount else None
        secret = named(docs, "Secret", secret_name) if secret_name else None
        key = cfg.admin.token_file.removeprefix(mount["mountPath"].rstrip("/") + "/") \
            if mount else ""
        if secret is None:
            problems.append(f"admin.token_file {cfg.admin.token_file}: not in a mounted "
                            "Secret of this file")
        elif key not in {**secret.get("data", {}), **secret.get("stringData", {})}:
            problems.append(f"admin.token_file {cfg.admin.token_file}: Secret {secret_name} "
                            f"has no key {key}")
    # Listeners reachable from the kubelet and the Service; probes on the admin port.
    for what, addr in (("listen", cfg.listen), ("admin.listen", cfg.admin.listen)):
        if addr.host not in ("0.0.0.0", "::"):
            problems.append(f"{what} {addr}: not reachable from outside the Pod")
        if addr.port not in [p["containerPort"] for p in veer.get("ports", [])]:
            problems.append(f"{what} port {addr.port}: not a containerPort of {veer['name']}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = veer.get(probe, {}).get("httpGet")
        if http is None or http.get("path") != path or \
                port_of(http.get("port", 0), veer) != cfg.admin.listen.port:
            problems.append(f"{veer['name']}: {probe} is not GET {path} on the admin port "
                            f"{cfg.admin.listen.port}")
    labels = pod["metadata"].get("labels", {})
    if not any(selects(s["spec"].get("selector", {}), labels) and
               any(port_of(p.get("targetPort", p["port"]), veer) == cfg.listen.port
                   for p in s["spec"]["ports"])
               for s in by_kind(docs, "Service")):
        problems.append(f"no Service sends to veer's data port {cfg.listen.port}")
    annotations = pod["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or \
            annotations.get("prometheus.io/port") != str(cfg.admin.listen.port) or \
            annotations.get("prometheus.io/path") != "/metrics":
        problems.append("Pod annotations do not point Prometheus at the admin /metrics")
    # Non-root as the image's user; bounded resources; somewhere writable for state.
    security = {**spec.get("securityContext", {}), **veer.get("securityContext", {})}
    if security.get("runAsNonRoot") is not True or security.get("runAsUser") != IMAGE_UID:
        problems.append(f"{veer['name']}: not runAsNonRoot as uid {IMAGE_UID}")
    for c in spec["containers"]:
        resources = c.get("resources", {})
        if not resources.get("requests") or not resources.get("limits", {}).get("memory"):
            problems.append(f"{c['name']}: no resource requests or memory limit")
    if cfg.state.path is not None:
        mount = mount_for(cfg.state.path, veer)
        source = volumes.get(mount["name"], {}) if mount else {}
        if mount is None or mount.get("readOnly") or \
                not ({"emptyDir", "persistentVolumeClaim"} & set(source)):
            problems.append(f"state.path {cfg.state.path}: not on a writable volume")
    if cfg.rollout is not None and cfg.cluster is None and dep["spec"].get("replicas", 1) > 1:
        problems.append(f"Deployment {dep['metadata']['name']}: several replicas, each with "
                        "its own rollout (add cluster:)")
    return problems


def sidecar_problems(docs: list[Doc], cfg: Config) -> list[str]:
    """The sidecar's own wiring: upstreams are the app's containers in the same Pod."""
    dep = by_kind(docs, "Deployment")[0]
    containers = dep["spec"]["template"]["spec"]["containers"]
    problems = []
    for variant, pool in (("original", cfg.original), ("new", cfg.new)):
        for e in pool.endpoints:
            owner = [c["name"] for c in containers
                     if e.port in [p["containerPort"] for p in c.get("ports", [])]]
            if e.host not in ("127.0.0.1", "localhost") or len(owner) != 1:
                problems.append(f"upstreams.{variant} {e.host}:{e.port}: not one container "
                                "of this Pod on localhost")
    return problems


def standalone_problems(docs: list[Doc], cfg: Config) -> list[str]:
    """The standalone wiring: replicas share Redis through its Service; upstreams are
    Services; the disruption budget covers the replicas."""
    problems = []
    veer = next(d for d in by_kind(docs, "Deployment")
                if any(v.get("configMap", {}).get("name") == "veer"
                       for v in d["spec"]["template"]["spec"].get("volumes", [])))
    replicas = veer["spec"]["replicas"]
    labels = veer["spec"]["template"]["metadata"]["labels"]
    if replicas < 2:
        problems.append("fewer than 2 replicas")
    if cfg.cluster is None:
        return [*problems, "no cluster: the replicas would run a rollout each"]
    redis = urlsplit(cfg.cluster.redis)
    svc = named(docs, "Service", redis.hostname or "")
    port = next((p for p in (svc or {}).get("spec", {}).get("ports", [])
                 if p["port"] == (redis.port or 6379)), None)
    backing = [c for d in by_kind(docs, "Deployment")
               if svc and selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]
                                  .get("labels", {}))
               for c in d["spec"]["template"]["spec"]["containers"]
               if port and port_of(port.get("targetPort", port["port"]), c) is not None]
    if not backing:
        problems.append(f"cluster.redis {cfg.cluster.redis}: no Service and Pod behind it")
    for variant, pool in (("original", cfg.original), ("new", cfg.new)):
        for e in pool.endpoints:
            target = named(docs, "Service", e.host)
            if target is None or e.port not in [p["port"] for p in target["spec"]["ports"]]:
                problems.append(f"upstreams.{variant} {e.host}:{e.port}: no such Service")
    budgets = [b for b in by_kind(docs, "PodDisruptionBudget")
               if selects(b["spec"]["selector"]["matchLabels"], labels)]
    if len(budgets) != 1 or not 0 < budgets[0]["spec"].get("minAvailable", 0) < replicas:
        problems.append("no PodDisruptionBudget that lets one replica go at a time")
    return problems


# -- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sidecar.yaml", "standalone.yaml"])
def test_every_kubernetes_document_passes_the_api_schema(name: str) -> None:
    docs = documents(KUBE / name)
    assert {"ConfigMap", "Secret", "Deployment", "Service"} <= {d["kind"] for d in docs}
    problems = [p for d in docs if (p := schema_problem(d)) is not None]
    assert problems == []


def test_a_broken_manifest_fails_the_schema() -> None:
    deployment = by_kind(documents(KUBE / "sidecar.yaml"), "Deployment")[0]
    assert schema_problem(deployment) is None
    broken = []
    for edit in ("replicas", "field", "probe", "kind"):
        doc = copy.deepcopy(deployment)
        veer = doc["spec"]["template"]["spec"]["containers"][0]
        if edit == "replicas":
            doc["spec"]["replicas"] = "three"
        elif edit == "field":
            veer["volumeMount"] = veer.pop("volumeMounts")  # a typo: unknown in strict mode
        elif edit == "probe":
            veer["readinessProbe"]["httpGet"].pop("port")  # required
        else:
            doc["apiVersion"] = "apps/v1beta9"  # no schema: not a silent pass
        broken.append(schema_problem(doc))
    assert all(broken), broken
    assert "replicas" in str(broken[0]) and "volumeMount" in str(broken[1])


@pytest.mark.parametrize("name", ["sidecar.yaml", "standalone.yaml"])
def test_the_veer_config_in_each_configmap_loads_and_passes_preflight(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEER_ADMIN_TOKEN", raising=False)  # the token must come from the file
    maps = veer_configmaps(documents(KUBE / name))
    assert len(maps) == 1
    cfg = veer_config(maps[0]["data"]["veer.yaml"], tmp_path)
    assert preflight_here(cfg, tmp_path) == []
    assert cfg.rollout is not None


def test_a_configmap_veer_would_refuse_fails_the_loader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEER_ADMIN_TOKEN", raising=False)
    sidecar = veer_configmaps(documents(KUBE / "sidecar.yaml"))[0]["data"]["veer.yaml"]
    standalone = veer_configmaps(documents(KUBE / "standalone.yaml"))[0]["data"]["veer.yaml"]
    refused = [
        sidecar + "weights: {new: 250}\n",                       # not a percent
        sidecar.replace("routing:", "routng:"),                  # an unknown key
        standalone + "state: {path: /var/lib/veer/state.json}\n",  # state lives in Redis
        standalone.replace("redis://veer-redis", "http://veer-redis"),
    ]
    for text in refused:
        with pytest.raises(ConfigError):
            veer_config(text, tmp_path)
    # Loaded, but refused at start: off loopback without a token.
    cfg = veer_config(sidecar.replace("token_file: /run/secrets/veer/admin-token", ""),
                      tmp_path)
    assert any("no admin token" in p for p in preflight_here(cfg, tmp_path))


def test_the_sidecar_is_wired_together(tmp_path: Path) -> None:
    docs = documents(KUBE / "sidecar.yaml")
    cm = veer_configmaps(docs)[0]
    cfg = veer_config(cm["data"]["veer.yaml"], tmp_path)
    assert veer_pod_problems(docs, cm, cfg) == []
    assert sidecar_problems(docs, cfg) == []
    assert cfg.state.path is not None and cfg.cluster is None
    # And the checks can fail: probes on the wrong path and port, a token outside the
    # Secret, an upstream that no container serves.
    broken = copy.deepcopy(docs)
    veer = by_kind(broken, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    veer["readinessProbe"]["httpGet"] = {"path": "/healthz", "port": "http"}
    by_kind(broken, "Secret")[0]["stringData"] = {"token": "x"}
    problems = veer_pod_problems(broken, cm, cfg)
    assert any("readinessProbe" in p for p in problems)
    assert any("has no key admin-token" in p for p in problems)
    moved = veer_config(cm["data"]["veer.yaml"].replace("127.0.0.1:9002", "127.0.0.1:9003"),
                        tmp_path)
    assert sidecar_problems(docs, moved) == \
        ["upstreams.new 127.0.0.1:9003: not one container of this Pod on localhost"]


def test_the_standalone_replicas_share_redis_and_are_wired_together(tmp_path: Path) -> None:
    docs = documents(KUBE / "standalone.yaml")
    cm = veer_configmaps(docs)[0]
    cfg = veer_config(cm["data"]["veer.yaml"], tmp_path)
    assert veer_pod_problems(docs, cm, cfg) == []
    assert standalone_problems(docs, cfg) == []
    veer = named(docs, "Deployment", "veer")
    assert veer is not None and veer["spec"]["replicas"] == 3
    # The checks can fail: Redis under another name, a budget that blocks every drain.
    broken = copy.deepcopy(docs)
    budget = by_kind(broken, "PodDisruptionBudget")[0]
    budget["spec"]["minAvailable"] = 3
    elsewhere = veer_config(cm["data"]["veer.yaml"].replace("veer-redis:", "redis:"), tmp_path)
    problems = standalone_problems(broken, elsewhere)
    assert any(p.startswith("cluster.redis redis://redis:6379/0") for p in problems)
    assert "no PodDisruptionBudget that lets one replica go at a time" in problems


def without_kubernetes_sd(prometheus_yml: str) -> str:
    """The scrape config with its Kubernetes discovery swapped for a file one: Debian's
    promtool is built without Kubernetes SD, and everything else is still checked."""
    data = yaml.safe_load(prometheus_yml)
    for job in data["scrape_configs"]:
        for sd in job.pop("kubernetes_sd_configs", []):
            assert sd["role"] in ("pod", "endpoints", "service", "node", "ingress")
            job.setdefault("file_sd_configs", []).append({"files": ["targets/*.json"]})
    return yaml.safe_dump(data)


def promtool_check_config(prometheus_yml: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` on ``prometheus_yml`` with veer's rules beside it at
    ``rules/veer.yml``, where both examples mount them."""
    promtool = require_binary("promtool", "apt-get install prometheus")
    where = tmp_path / "prometheus"
    (where / "rules").mkdir(parents=True, exist_ok=True)
    shutil.copy(RULES, where / "rules" / "veer.yml")
    (where / "prometheus.yml").write_text(prometheus_yml, encoding="utf-8")
    return subprocess.run([promtool, "check", "config", str(where / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)


def test_the_prometheus_examples_pass_promtool_with_veers_rules(tmp_path: Path) -> None:
    kube = named(documents(KUBE / "standalone.yaml"), "ConfigMap", "veer-prometheus-example")
    assert kube is not None
    compose = (COMPOSE.parent / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    for text in (without_kubernetes_sd(kube["data"]["prometheus.yml"]), compose):
        result = promtool_check_config(text, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "rules/veer.yml" in result.stdout and "SUCCESS" in result.stdout
    broken = compose.replace("scrape_interval: 5s", "scrape_interval: 5 seconds")
    assert promtool_check_config(broken, tmp_path).returncode != 0
    broken = without_kubernetes_sd(kube["data"]["prometheus.yml"]).replace(
        "regex: (.+)", "regex: (.+")
    assert promtool_check_config(broken, tmp_path).returncode != 0


# -- compose ------------------------------------------------------------------------------


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose config -q`` on ``path``, its relative paths read from the example's
    directory (so a broken copy elsewhere is judged the same way)."""
    binary = require_binary("docker-compose", "apt-get install docker-compose")
    return subprocess.run([binary, "--project-directory", str(COMPOSE.parent), "-f", str(path),
                           "config", "-q"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": "veer-deploy-test"})


def test_docker_compose_accepts_the_compose_file() -> None:
    result = compose_config(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_refuses_a_broken_copy(tmp_path: Path) -> None:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    edits: list[tuple[str, list[str], Any]] = [
        ("ports", ["services", "veer-a", "ports"], "8080:8080"),       # not a list
        ("key", ["services", "veer-a", "volume"], []),                 # no such option
        ("depends", ["services", "veer-a", "depends_on"], ["redis-1"]),  # no such service
        ("build", ["services", "veer-a", "build", "context"], "../nowhere"),
    ]
    for name, keys, value in edits:
        broken = copy.deepcopy(data)
        parent = broken
        for key in keys[:-1]:
            parent = parent[key]
        parent[keys[-1]] = value
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(broken), encoding="utf-8")
        assert compose_config(path).returncode != 0, name


def compose_services() -> dict[str, Doc]:
    services: dict[str, Doc] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    return services


def mounts(service: Doc) -> dict[str, Path]:
    """Container path -> host path, for the service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = (COMPOSE.parent / source).resolve()
    return out


def test_the_compose_veer_config_loads_and_the_services_fit_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEER_ADMIN_TOKEN", raising=False)
    services = compose_services()
    secrets = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["secrets"]
    replicas = {n: s for n, s in services.items() if f"{CONFIG_DIR}/veer.yaml" in mounts(s)}
    assert len(replicas) == 2
    for name, service in replicas.items():
        source = mounts(service)[f"{CONFIG_DIR}/veer.yaml"]
        cfg = veer_config(source.read_text(encoding="utf-8"), tmp_path)
        assert preflight_here(cfg, tmp_path) == []
        assert (ROOT / "Dockerfile").is_file() and \
            (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
        assert cfg.listen.host == cfg.admin.listen.host == "0.0.0.0"
        # The token: a compose secret this service gets, whose file exists.
        token = cfg.admin.token_file
        assert token is not None and token.startswith("/run/secrets/"), name
        secret = token.removeprefix("/run/secrets/")
        assert secret in service["secrets"] and (COMPOSE.parent / secrets[secret]["file"]).is_file()
        # Redis and both upstreams are services of this file, on the ports they serve.
        assert cfg.cluster is not None and urlsplit(cfg.cluster.redis).hostname in services
        for pool in (cfg.original, cfg.new):
            for e in pool.endpoints:
                assert e.host in services and str(e.port) in " ".join(
                    services[e.host]["command"]), (name, e)
        # Both listeners published, on the host's loopback only.
        assert {cfg.listen.port, cfg.admin.listen.port} <= \
            {int(p.rsplit(":", 1)[1]) for p in service["ports"]}, name
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), name
    # Prometheus scrapes every replica's admin port and loads veer's rules where its
    # config looks for them.
    prometheus = services["prometheus"]
    prom_mounts = mounts(prometheus)
    prom_config = yaml.safe_load(prom_mounts["/etc/prometheus/prometheus.yml"].read_text())
    targets = {t for job in prom_config["scrape_configs"]
               for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert targets == {f"{n}:9901" for n in replicas}
    rules = [t for t, src in prom_mounts.items() if src == RULES]
    assert len(rules) == 1 and any(
        Path(rules[0]).match(f"/etc/prometheus/{g}") for g in prom_config["rule_files"])
    # Grafana: the data source is that Prometheus; the dashboard file is mounted where
    # the provider reads.
    grafana = mounts(services["grafana"])
    provisioning = {t: s for t, s in grafana.items() if t.startswith("/etc/grafana/provisioning")}
    datasources = yaml.safe_load(
        (provisioning["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text())
    assert urlsplit(datasources["datasources"][0]["url"]).hostname == "prometheus"
    providers = yaml.safe_load(
        (provisioning["/etc/grafana/provisioning/dashboards"] / "veer.yml").read_text())
    dashboard = [t for t, s in grafana.items() if s == DASHBOARD]
    assert len(dashboard) == 1
    assert Path(dashboard[0]).parent == Path(providers["providers"][0]["options"]["path"])


# -- the dashboard and the alert rules ------------------------------------------------------


def panels(dashboard: Doc) -> Iterator[Doc]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries(dashboard: Doc) -> dict[str, str]:
    """Every PromQL query of the dashboard (panels and annotations), by where it is."""
    out = {f"panel {p['id']} {t['refId']}": t["expr"]
           for p in panels(dashboard) for t in p.get("targets", [])}
    for a in dashboard["annotations"]["list"]:
        if "expr" in a:
            out[f"annotation {a['name']}"] = a["expr"]
    return out


def promql_problems(queries: dict[str, str], tmp_path: Path) -> str:
    """promtool's complaints about ``queries`` as PromQL (empty: all parse), with the
    dashboard's variables filled in as Grafana does for "All"."""
    promtool = require_binary("promtool", "apt-get install prometheus")
    rules = [{"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\{?(\w+)\}?", ".*", q)}
             for i, q in enumerate(queries.values())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert any("veer_cluster_leader" in q for q in queries.values())
    assert any("veer_experiment_lift" in q for q in queries.values())
    assert promql_problems(queries, tmp_path) == ""
    assert "could not parse expression" in promql_problems(
        {"broken": "sum by (variant (veer_requests_total)"}, tmp_path)


def test_the_dashboard_variables_data_source_and_layout() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # ${DS_PROMETHEUS} is filled in on import (__inputs) and, when provisioned from a
    # file (compose), by the data source variable of that name.
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    used = set(re.findall(r"\$\{?(\w+)\}?", DASHBOARD.read_text())) - {"__all"}
    assert used <= set(variables), used - set(variables)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for p in panels(dashboard):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells
    titles = {p["title"] for p in panels(dashboard)}
    assert {"Leader per replica", "Redis reachable per replica", "Members seen per replica",
            "Lease epoch and takeovers", "Lift of new over original, with always-valid bounds",
            "p-values: fixed-horizon per metric, SRM", "Users per variant"} <= titles


def series(name: str, values: str, **labels: str) -> Doc:
    text = ",".join(f'{k}="{v}"' for k, v in {"job": "veer", **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def alert(name: str, at: str, *fired: dict[str, str]) -> Doc:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": {"job": "veer", **f}} for f in fired]}


A = {"instance": "a:9901", "cluster": "shop", "replica": "a"}
B = {"instance": "b:9901", "cluster": "shop", "replica": "b"}
EXP = {"experiment": "ranking-v2"}
RULE_TESTS: list[Doc] = [
    {"name": "no replica leads for more than 30s", "input_series": [
        series("veer_cluster_leader", "0x8", **A), series("veer_cluster_leader", "0x8", **B)],
     "alert_rule_test": [
        alert("VeerClusterNoLeader", "15s"),
        alert("VeerClusterNoLeader", "45s", {"cluster": "shop", "severity": "page"}),
        alert("VeerClusterSplitBrain", "45s")]},
    {"name": "one leader is quiet", "input_series": [
        series("veer_cluster_leader", "1x20", **A), series("veer_cluster_leader", "0x20", **B),
        series("veer_cluster_redis_reachable", "1x20", **A),
        series("veer_cluster_redis_reachable", "1x20", **B),
        series("veer_cluster_members", "2x40", **A), series("veer_cluster_members", "2x40", **B),
        series("veer_cluster_lease_epoch", "7x20", **A),
        series("veer_cluster_lease_epoch", "7x20", **B)],
     "alert_rule_test": [alert(name, "4m") for name in (
        "VeerClusterNoLeader", "VeerClusterSplitBrain", "VeerClusterRedisUnreachable",
        "VeerClusterMembersMismatch", "VeerClusterLeaderFlapping")]},
    {"name": "two leaders", "input_series": [
        series("veer_cluster_leader", "1x8", **A), series("veer_cluster_leader", "1x8", **B)],
     "alert_rule_test": [
        alert("VeerClusterSplitBrain", "15s"),
        alert("VeerClusterSplitBrain", "45s", {"cluster": "shop", "severity": "warn"})]},
    {"name": "one replica cannot reach Redis", "input_series": [
        series("veer_cluster_redis_reachable", "1x8", **A),
        series("veer_cluster_redis_reachable", "0x8", **B)],
     "alert_rule_test": [
        alert("VeerClusterRedisUnreachable", "45s", {**B, "severity": "warn"})]},
    {"name": "a member nobody scrapes", "input_series": [
        series("veer_cluster_members", "3x30", **A), series("veer_cluster_members", "3x30", **B)],
     "alert_rule_test": [
        alert("VeerClusterMembersMismatch", "4m"),
        alert("VeerClusterMembersMismatch", "6m", {"cluster": "shop", "severity": "info"})]},
    {"name": "the lease changes hands again and again", "input_series": [
        series("veer_cluster_lease_epoch", "1 2 3 4 5 5 5", **A),
        series("veer_cluster_lease_epoch", "1 2 3 4 5 5 5", **B)],
     "alert_rule_test": [
        alert("VeerClusterLeaderFlapping", "30s"),
        alert("VeerClusterLeaderFlapping", "1m", {"cluster": "shop", "severity": "warn"})]},
    {"name": "sample ratio mismatch on two replicas: one alert, and no second for its stop",
     "input_series": [
        series("veer_experiment_srm_p_value", "0.0004x8", instance="a:9901", **EXP),
        series("veer_experiment_srm_p_value", "0.0004x8", instance="b:9901", **EXP),
        series("veer_experiment_decision_info", "1x8", instance="a:9901", action="stop", **EXP)],
     "alert_rule_test": [
        alert("VeerExperimentSampleRatioMismatch", "30s"),
        alert("VeerExperimentSampleRatioMismatch", "90s", {**EXP, "severity": "warn"}),
        alert("VeerExperimentStop", "90s")]},
    {"name": "a guardrail says stop", "input_series": [
        series("veer_experiment_srm_p_value", "0.6x8", instance="a:9901", **EXP),
        series("veer_experiment_decision_info", "1x8", instance="a:9901", action="stop", **EXP)],
     "alert_rule_test": [
        alert("VeerExperimentStop", "90s", {**EXP, "severity": "warn"}),
        alert("VeerExperimentSampleRatioMismatch", "90s")]},
    {"name": "ship, and malformed values", "input_series": [
        series("veer_experiment_decision_info", "1x60", instance="a:9901", action="ship", **EXP),
        series("veer_metric_values_malformed_total", "0+2x60", instance="a:9901", **EXP)],
     "alert_rule_test": [
        alert("VeerExperimentReadyToShip", "4m"),
        alert("VeerExperimentReadyToShip", "6m", {**EXP, "severity": "info"}),
        alert("VeerExperimentMalformedMetrics", "12m", {**EXP, "severity": "info"})]},
]


def promtool_test_rules(rules: Doc, tests: list[Doc], tmp_path: Path
                        ) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` of ``tests`` against ``rules`` with their annotations left
    out (their templates are checked by promtool check rules; here: what fires, when,
    with which labels)."""
    promtool = require_binary("promtool", "apt-get install prometheus")
    rules = copy.deepcopy(rules)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "15s",
        "tests": [{"interval": "15s", **t} for t in tests]}), encoding="utf-8")
    return subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_the_cluster_and_experiment_alerts_fire_as_written(tmp_path: Path) -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    result = promtool_test_rules(rules, RULE_TESTS, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same harness fails when a rule does not fire as expected: two leaders are not
    # "no leader".
    wrong = [{**RULE_TESTS[2], "alert_rule_test": [
        alert("VeerClusterNoLeader", "45s", {"cluster": "shop", "severity": "page"})]}]
    assert promtool_test_rules(rules, wrong, tmp_path).returncode != 0
