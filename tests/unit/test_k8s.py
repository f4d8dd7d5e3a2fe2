"""deploy/k8s: the manifests are valid Kubernetes objects (kubeconform against offline schemas,
installed by `make k8s-tools`), carry every setting, and give each worker its own URL."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
K8S_VERSION = "1.31.0"


def _tools() -> tuple[Path, Path]:
    """kubeconform and the schema folder; fails (never skips) when `make k8s-tools` was not run."""
    check = subprocess.run([K8S / "tools", "--check"], capture_output=True, text=True)
    assert check.returncode == 0, f"{check.stderr.strip()} (or `make k8s-tools`)"
    out = subprocess.run([K8S / "tools"], capture_output=True, text=True, check=True)
    binary, schemas = out.stdout.split()
    return Path(binary), Path(schemas)


def _kubeconform(*files: Path) -> subprocess.CompletedProcess[str]:
    binary, schemas = _tools()
    location = (
        f"{schemas}/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}"
        "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    )
    return subprocess.run(
        [binary, "-strict", "-summary", "-kubernetes-version", K8S_VERSION,
         "-schema-location", location, *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _objects() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_every_manifest_is_valid_for_kubernetes() -> None:
    assert {p.name for p in MANIFESTS} >= {"statefulset.yaml", "configmap.yaml", "secret.yaml"}
    proc = _kubeconform(*MANIFESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Valid: {len(_objects())}, Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout


def test_the_validator_refuses_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = (K8S / "statefulset.yaml").read_text()
    broken.write_text(text.replace("  replicas: 3", "  replica: 3"))
    proc = _kubeconform(broken)
    assert proc.returncode == 1
    assert "additional properties 'replica' not allowed" in proc.stdout


def _worker() -> dict[str, Any]:
    sts = _objects()["StatefulSet/runstream"]
    [container] = sts["spec"]["template"]["spec"]["containers"]
    return {"sts": sts, "container": container}


def test_every_setting_comes_from_the_configmap_the_secret_or_the_pod() -> None:
    objects = _objects()
    config = objects["ConfigMap/runstream-config"]["data"]
    secret = objects["Secret/runstream-secrets"]["stringData"]
    pod_env = {e["name"]: e for e in _worker()["container"]["env"]}
    everywhere = set(config) | set(secret) | set(pod_env)
    assert {o.env for o in OPTIONS} <= everywhere
    # Secrets never in the ConfigMap; the S3 keys and the token only in the Secret.
    secrets = {o.env for o in OPTIONS if o.secret} | {"RUNSTREAM_S3_ACCESS_KEY"}
    assert secrets == set(secret)
    assert not secrets & set(config)
    assert config["RUNSTREAM_WEB_HOST"] == "0.0.0.0"
    assert config["RUNSTREAM_STORAGE"].startswith("s3://")
    refs = _worker()["container"]["envFrom"]
    assert {"configMapRef": {"name": "runstream-config"}} in refs
    assert {"secretRef": {"name": "runstream-secrets"}} in refs


def test_each_pod_advertises_its_own_dns_name() -> None:
    w = _worker()
    env = w["container"]["env"]
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    assert by_name["RUNSTREAM_ADVERTISED_URL"]["value"] == (
        "http://$(POD_NAME).runstream-headless.$(NAMESPACE).svc:6066"
    )
    # $(VAR) only expands variables defined earlier in the list.
    assert names.index("POD_NAME") < names.index("RUNSTREAM_ADVERTISED_URL")
    assert names.index("NAMESPACE") < names.index("RUNSTREAM_ADVERTISED_URL")
    assert by_name["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    headless = _objects()["Service/runstream-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert w["sts"]["spec"]["serviceName"] == "runstream-headless"
    labels = w["sts"]["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()
    assert _objects()["Service/runstream"]["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_ask_healthz(probe: str) -> None:
    c = _worker()["container"]
    assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": 6066} in c["ports"]


def test_prometheus_scrapes_metrics() -> None:
    annotations = _worker()["sts"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "6066",
        "prometheus.io/path": "/metrics",
    }
