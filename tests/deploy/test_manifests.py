"""The Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate, strict:
no unknown fields), and hang together: selectors, probes, Secret keys, HPA and PDB targets. The
compose file's scale-out profile puts two replicas on one PostgreSQL."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy/kubernetes"
K8S_VERSION = "1.30.0"


def documents() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_validates_strictly(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_pieces_fit_together() -> None:
    (deploy,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "simclr-embed"]
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (secret,) = by_kind("Secret")
    keys = set(secret["stringData"])
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert {r["key"] for r in refs} <= keys and {r["name"] for r in refs} == {"simclr-embed"}
    assert {e["name"] for e in container["env"]} >= {"SIMCLR_EMBED_GALLERY_URL",
                                                     "SIMCLR_EMBED_API_KEY"}
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a drain keeps one up
    (svc,) = [d for d in by_kind("Service") if d["metadata"]["name"] == "simclr-embed"]
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    (pg,) = by_kind("StatefulSet")
    pg_svc = pg["spec"]["serviceName"]
    assert f"@{pg_svc}:5432/" in secret["stringData"]["gallery-url"]


def test_compose_scale_out_profile() -> None:
    compose = yaml.safe_load((DEPLOY.parents[1] / "docker-compose.yml").read_text())
    services = compose["services"]
    scale = {n: s for n, s in services.items() if "scale-out" in s.get("profiles", [])}
    assert set(scale) == {"postgres", "replica-1", "replica-2"}
    urls = {s["environment"]["SIMCLR_EMBED_GALLERY_URL"] for n, s in scale.items()
            if n.startswith("replica")}
    assert len(urls) == 1 and "@postgres:5432/" in urls.pop()
    assert "pgvector" in scale["postgres"]["image"]


def test_the_rayjob_runs_the_indexer_on_valid_pods() -> None:
    """KubeRay's CRD is not in kubernetes-validate; its pod templates are core PodTemplateSpecs
    and validate strictly as such, and the job is the indexer on the service's gallery."""
    (job,) = yaml.safe_load_all((DEPLOY / "ray/rayjob-index.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("simclr-embed index ")
    assert "--ray auto" in job["spec"]["entrypoint"]
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]]
    for n, template in enumerate(templates):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": f"t{n}"}, "template": template},
                                     K8S_VERSION, strict=True)
    (secret,) = by_kind("Secret")
    head_env = templates[0]["spec"]["containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in head_env} <= set(secret["stringData"])
