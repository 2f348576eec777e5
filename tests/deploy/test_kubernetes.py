"""deploy/kubernetes/ (kustomize): the shipped overlays and one written here render with
``kubectl kustomize``; every manifest validates against the Kubernetes OpenAPI schemas
offline (kubernetes-validate); the node pods' probes, drain, secrets, settings and autoscaling
fit together; and the rendered pod spec runs under ``podman kube play`` (host network,
127.0.0.1) until /readyz answers ready."""

from __future__ import annotations

import base64
import copy
import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.deploy.containers import BUILD_TIMEOUT_S, START_TIMEOUT_S, podman_images
from tests.support import scaled
from tidegate.bench.target import free_port
from tidegate.server.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SHIPPED = ("example", "gpu")
SCHEMA_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
ADAPTER = KUBE / "prometheus-adapter-values.yaml"


def render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize folder``: its documents."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=scaled(60)
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def overlay(tmp: Path, *, replicas: int, image: str, literals: dict[str, str]) -> Path:
    """An overlay of the base written here: ``replicas`` nodes of ``image``, its Secret from
    ``literals`` (the value set a test gives)."""
    tmp.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(KUBE / "base", tmp)
    name, _, tag = image.rpartition(":")
    kustomization = {
        "namespace": "tidegate-test",
        "bases": [base],
        "images": [{"name": "tidegate:cpu", "newName": name, "newTag": tag}],
        "patchesStrategicMerge": ["replicas.yaml"],
        "secretGenerator": [
            {"name": "tidegate-secrets", "literals": [f"{k}={v}" for k, v in literals.items()]}
        ],
    }
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    patch = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "tidegate"},
        "spec": {"replicas": replicas},
    }
    (tmp / "replicas.yaml").write_text(yaml.safe_dump(patch))
    return tmp


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def secrets_literals() -> dict[str, str]:
    return {
        "jwt-secret": secrets.token_hex(32),
        "turn-secret": secrets.token_hex(16),
        "database-url": "sqlite:////var/lib/tidegate/journal/records.db",
        "redis-url": "",
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each shipped overlay, and one with three nodes of the local image, rendered."""
    out = {name: render(KUBE / "overlays" / name) for name in SHIPPED}
    tmp = tmp_path_factory.mktemp("kustomize") / "three"
    out["three"] = render(
        overlay(tmp, replicas=3, image="localhost/tidegate:cpu", literals=secrets_literals())
    )
    return out


def test_every_manifest_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Every rendered document of every value set passes kubernetes-validate, strictly (no
    field the schema does not know)."""
    for name, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {
            "ConfigMap",
            "Secret",
            "StatefulSet",
            "Service",
            "PodDisruptionBudget",
            "Ingress",
            "HorizontalPodAutoscaler",
        } <= kinds, (name, kinds)
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                what = f"{name}: {doc['kind']} {doc['metadata']['name']}"
                raise AssertionError(f"{what}: {e}") from None


def test_nodes_probe_drain_and_read_real_settings(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The node pods: /readyz readiness, /healthz liveness, a grace period longer than the
    drain, each on its own host with hostNetwork; every ConfigMap key is a setting and the
    node's environment loads; every secret it reads is in the rendered Secret."""
    names = {ENV_PREFIX + f.upper() for f in Settings.__dataclass_fields__}
    for docs in rendered.values():
        (config,) = by_kind(docs, "ConfigMap")
        (secret,) = by_kind(docs, "Secret")
        (sts,) = by_kind(docs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        (node,) = pod["containers"]
        assert node["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert node["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["hostNetwork"] is True
        anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
        assert set(config["data"]) <= names, set(config["data"]) - names
        drain = float(config["data"]["TIDEGATE_DRAIN_TIMEOUT_S"])
        assert pod["terminationGracePeriodSeconds"] > drain
        env = dict(config["data"])
        for var in node["env"]:
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert ref["name"] == secret["metadata"]["name"], var
                assert ref["key"] in secret["data"], var
                env[var["name"]] = "x" * 32
            elif "value" in var and var["name"].startswith(ENV_PREFIX):
                env[var["name"]] = var["value"].replace("$(HOST_IP)", "192.0.2.1")
        env["TIDEGATE_ROUTE_ID"] = "0"  # the pod's ordinal
        env["TIDEGATE_DATABASE_URL"] = "sqlite:///x.db"
        env["TIDEGATE_REDIS_URL"] = ""
        settings = Settings.load(env)
        assert settings.ice_ports and settings.metrics_port
        assert settings.drain_timeout_s == drain
        ports = {p["name"]: p["containerPort"] for p in node["ports"]}
        assert ports == {"http": settings.port, "metrics": settings.metrics_port}
        (pdb,) = by_kind(docs, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= (
            sts["spec"]["template"]["metadata"]["labels"].items()
        )
    gpu = rendered["gpu"]
    (sts,) = by_kind(gpu, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert by_kind(rendered["three"], "StatefulSet")[0]["spec"]["replicas"] == 3


def test_ingress_sticks_and_autoscaling_uses_adapter_metrics(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The Ingress routes to the node Service with cookie affinity; the HPA's pod metrics are
    the ones the prometheus-adapter values define, from series /metrics exports."""
    docs = rendered["example"]
    (ingress,) = by_kind(docs, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert backend["port"]["name"] in {
        p["name"] for p in services[backend["name"]]["spec"]["ports"]
    }
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    adapter = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    assert wanted == {r["name"]["as"] for r in adapter}
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    for rule in adapter:
        series = rule["seriesQuery"].split("{")[0]
        assert f"`{series}`" in metrics_doc, series


def _pod_from(docs: list[dict[str, Any]], port: int, metrics_port: int) -> list[dict[str, Any]]:
    """The StatefulSet's first pod as ``podman kube play`` takes it: a Pod (ordinal 0) with
    the ConfigMap beside it (on 127.0.0.1 and free ports: NETWORK.md); the journal's claim
    becomes an emptyDir (a pod runner has no volume claims)."""
    (config,) = by_kind(docs, "ConfigMap")
    (secret,) = by_kind(docs, "Secret")
    (sts,) = by_kind(docs, "StatefulSet")
    config = copy.deepcopy(config)
    config["data"].update(
        {
            "TIDEGATE_HOST": "127.0.0.1",
            "TIDEGATE_PORT": str(port),
            "TIDEGATE_METRICS_HOST": "127.0.0.1",
            "TIDEGATE_METRICS_PORT": str(metrics_port),
            "TIDEGATE_TURN_URLS": "",
        }
    )
    template = copy.deepcopy(sts["spec"]["template"])
    labels = {**template["metadata"]["labels"], "apps.kubernetes.io/pod-index": "0"}
    spec = template["spec"]
    spec.pop("affinity")
    spec["volumes"] = [
        {"name": c["metadata"]["name"], "emptyDir": {}} for c in sts["spec"]["volumeClaimTemplates"]
    ]
    (node,) = spec["containers"]
    # What the kubelet resolves, resolved here: status.hostIP (the host's address is loopback
    # here), the Secret's keys (podman 4.3 reads a secretKeyRef from a podman secret, in a
    # format of its own) and $(NAME) references.
    values = {k: base64.b64decode("".join(v.split())).decode() for k, v in secret["data"].items()}
    for var in node["env"]:
        source = var.get("valueFrom", {})
        if source.get("fieldRef", {}).get("fieldPath") == "status.hostIP":
            var.pop("valueFrom")
            var["value"] = "127.0.0.1"
        elif "secretKeyRef" in source:
            var.pop("valueFrom")
            var["value"] = values[source["secretKeyRef"]["key"]]
    defined: dict[str, str] = {}
    for var in node["env"]:  # $(NAME) of a variable defined above, as the kubelet expands it
        if "value" in var:
            var["value"] = re.sub(
                r"\$\((\w+)\)", lambda m: defined.get(m.group(1), m.group(0)), var["value"]
            )
            defined[var["name"]] = var["value"]
    # podman 4.3 refuses declared ports with the host's network (it would map them); the
    # probes name the port instead of looking it up.
    named = {
        p["name"]: {"http": port, "metrics": metrics_port}[p["name"]] for p in node.pop("ports")
    }
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        node[probe]["httpGet"]["port"] = named[node[probe]["httpGet"]["port"]]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tidegate-0", "labels": labels},
        "spec": spec,
    }
    kubernetes_validate.validate(pod, SCHEMA_VERSION, strict=True)
    return [config, pod]


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_rendered_pod_runs_under_podman_kube_play(cpu_image: str, tmp_path: Path) -> None:
    """The rendered node pod, played by podman on the host network bound to 127.0.0.1, loads
    its ConfigMap and Secret, runs as uid 10001 and gets /readyz ready."""
    images = podman_images()
    docs = render(
        overlay(tmp_path / "play", replicas=1, image=cpu_image, literals=secrets_literals())
    )
    port, metrics_port = free_port(), free_port()
    play = tmp_path / "play.yaml"
    play.write_text(yaml.safe_dump_all(_pod_from(docs, port, metrics_port)))
    env = images.podman_env()
    started = subprocess.run(
        ["podman", "kube", "play", "--replace", str(play)],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(180),
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=scaled(2))
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = subprocess.run(
                    ["podman", "pod", "logs", "tidegate-0"], env=env, capture_output=True, text=True
                )
                raise AssertionError(f"not ready: {logs.stdout}{logs.stderr}")
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").status_code == 200
        uid = subprocess.run(
            ["podman", "exec", "tidegate-0-tidegate", "id", "-u"],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )
        assert uid.stdout.strip() == "10001", uid.stdout + uid.stderr
    finally:
        subprocess.run(
            ["podman", "kube", "down", str(play)], env=env, capture_output=True, timeout=scaled(120)
        )
