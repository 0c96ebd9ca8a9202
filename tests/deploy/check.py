#!/usr/bin/env python3
"""Checks deploy/ against what reads it: the Kubernetes manifests against the
Kubernetes schemas (kubernetes-validate), the ServiceMonitor against the Service it
must select, the ConfigMap's switchboard.toml against the server's own config
check, the Compose file with `docker compose config` (or docker-compose), the
Prometheus config with promtool, and the Grafana provisioning against the
dashboard's datasource.

    python3 tests/deploy/check.py [--switchboard target/debug/switchboard]

Tools that are missing fail the check when SWITCHBOARD_REQUIRE_DEPLOY_TOOLS=1
(CI), and are reported as skipped otherwise.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
# The oldest Kubernetes the manifests are for: preStop `sleep` is beta (on) from 1.30.
KUBERNETES_VERSION = "1.30.0"
REQUIRE = os.environ.get("SWITCHBOARD_REQUIRE_DEPLOY_TOOLS") == "1"

passed, failed, skipped = [], [], []


def check(name, ok, detail=""):
    (passed if ok else failed).append(name)
    print(f"[deploy] {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}")


def skip(name, why):
    if REQUIRE:
        check(name, False, f"required but {why}")
    else:
        skipped.append(name)
        print(f"[deploy] skip {name}: {why}")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--switchboard", default=os.path.join(ROOT, "target", "debug", "switchboard"))
    args = ap.parse_args()

    manifests = {name: load_all(os.path.join(K8S, name)) for name in sorted(os.listdir(K8S)) if name.endswith(".yaml")}
    by_kind = {}
    for docs in manifests.values():
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)

    # 1. Core manifests against the Kubernetes schemas.
    core = [os.path.join(K8S, n) for n, docs in manifests.items() if all(d["apiVersion"].split("/")[0] in ("v1", "apps") for d in docs)]
    validate = shutil.which("kubernetes-validate")
    if validate:
        r = run([validate, "--strict", "-k", KUBERNETES_VERSION, *core])
        check(f"kubernetes-validate --strict -k {KUBERNETES_VERSION} ({len(core)} files)", r.returncode == 0, r.stdout + r.stderr)
    else:
        skip("kubernetes-validate", "it is not installed (pip install kubernetes-validate)")

    # 2. The ServiceMonitor selects the Service, by its labels and port name, and the
    #    Service selects the DaemonSet's pods by the port the container names.
    (svc,) = by_kind["Service"]
    (mon,) = by_kind["ServiceMonitor"]
    (ds,) = by_kind["DaemonSet"]
    selector = mon["spec"]["selector"]["matchLabels"]
    check("ServiceMonitor selects the Service", all(svc["metadata"]["labels"].get(k) == v for k, v in selector.items()))
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    check("ServiceMonitor scrapes a port the Service has", all(e["port"] in port_names for e in mon["spec"]["endpoints"]))
    check("ServiceMonitor scrapes /metrics", all(e.get("path") == "/metrics" for e in mon["spec"]["endpoints"]))
    pod = ds["spec"]["template"]
    check("Service selects the DaemonSet's pods", all(pod["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items()))
    container = pod["spec"]["containers"][0]
    container_ports = {p["name"] for p in container["ports"]}
    check("Service targets a port the container names", all(p["targetPort"] in container_ports for p in svc["spec"]["ports"]))
    check("host networking (media on the node's UDP ports)", pod["spec"].get("hostNetwork") is True)
    check("probes on /healthz and /readyz",
          container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["readinessProbe"]["httpGet"]["path"] == "/readyz")

    # 3. The ConfigMap's configuration is valid for the server, and its drain fits the
    #    grace period with the preStop pause.
    (cm,) = by_kind["ConfigMap"]
    toml_text = cm["data"]["switchboard.toml"]
    if os.access(args.switchboard, os.X_OK):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(toml_text)
        env = dict(os.environ, SWITCHBOARD_AUTH_HS256_SECRET="x" * 48)
        r = run([args.switchboard, "check-config", f.name], env=env)
        os.unlink(f.name)
        check("the ConfigMap's switchboard.toml passes `switchboard check-config`", r.returncode == 0, r.stdout + r.stderr)
    else:
        skip("switchboard check-config", f"no binary at {args.switchboard}")
    import tomllib
    drain = tomllib.loads(toml_text).get("session", {}).get("drain_timeout", 30)
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    check(f"grace period {grace} s covers preStop {pre_stop} s + drain {drain} s", grace > pre_stop + drain)

    # 4. Compose, Prometheus and Grafana provisioning.
    compose = os.path.join(DEPLOY, "compose.yaml")
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        r = run([docker, "compose", "-f", compose, "config", "-q"])
        check("docker compose config", r.returncode == 0, r.stdout + r.stderr)
    elif shutil.which("docker-compose"):
        r = run(["docker-compose", "-f", compose, "config", "-q"])
        check("docker-compose config", r.returncode == 0, r.stdout + r.stderr)
    else:
        skip("docker compose config", "neither `docker compose` nor docker-compose is installed")
    services = yaml.safe_load(open(compose))["services"]
    check("Compose runs switchboard, prometheus and grafana", {"switchboard", "prometheus", "grafana"} <= set(services))
    promtool = shutil.which("promtool")
    if promtool:
        r = run([promtool, "check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")])
        check("promtool check config deploy/prometheus/prometheus.yml", r.returncode == 0, r.stdout + r.stderr)
    else:
        skip("promtool check config", "promtool is not installed (Debian: prometheus)")
    datasources = yaml.safe_load(open(os.path.join(DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yaml")))["datasources"]
    dashboard = json.load(open(os.path.join(DEPLOY, "grafana", "dashboards", "switchboard.json")))
    uids = {d["uid"] for d in datasources}
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    check("the dashboard's datasource is provisioned", used <= uids, f"{used} vs {uids}")

    print(f"[deploy] {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
