"""The deployment examples: Kubernetes manifests valid against the API's schemas (offline, with
the schemas `kubernetes-validate` ships), consistent with each other and with the CLI."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mlflow_monitor_plugin.cli.run import run_command

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "examples" / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes still commonly run that has everything used here


def documents(name):
    return [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]


def by_kind(name):
    return {d["kind"]: d for d in documents(name)}


@pytest.mark.parametrize("name", sorted(p.name for p in KUBERNETES.glob("*.yaml")))
def test_manifest_is_valid_kubernetes(name):
    docs = documents(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError
    assert all(d["kind"] != "ConfigMap" for d in docs)  # configs live in the experiments


def test_a_broken_manifest_is_refused():
    sts = by_kind("statefulset.yaml")["StatefulSet"]
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def _container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


def test_statefulset_shards_match_replicas_and_the_cli_accepts_its_arguments():
    kinds = by_kind("statefulset.yaml")
    sts = kinds["StatefulSet"]
    container = _container(sts)
    env = {e["name"]: e for e in container["env"]}
    assert int(env["MLFLOW_MONITOR_SHARDS"]["value"]) == sts["spec"]["replicas"]
    assert sts["spec"]["serviceName"] == kinds["Service"]["metadata"]["name"]
    args = container["args"]
    assert args[0] == "run" and "--shard-from-hostname" in args
    run_command.make_context("run", list(args[1:]))  # every option exists
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert args[args.index("--metrics-port") + 1] == str(port)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_judge_key_comes_from_the_secret_only():
    secret = by_kind("secret.yaml")["Secret"]
    for name in ("statefulset.yaml", "deployment.yaml"):
        for doc in documents(name):
            if doc["kind"] not in ("StatefulSet", "Deployment"):
                continue
            env = {e["name"]: e for e in _container(doc)["env"]}
            ref = env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
            assert "value" not in env["OPENAI_API_KEY"]


def test_dockerfile_copies_what_exists_and_runs_the_daemon():
    text = (KUBERNETES / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'mlflow-monitor = "mlflow_monitor_plugin.cli:main"' in pyproject
    assert 'ENTRYPOINT ["mlflow-monitor"]' in text
