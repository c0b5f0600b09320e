"""The deployment examples: Kubernetes manifests valid against the API's schemas (offline, with
the schemas `kubernetes-validate` ships), consistent with each other and with the CLI. The
Prometheus Operator's kinds (ServiceMonitor, PrometheusRule) are custom resources that
`kubernetes-validate` has no schema for: their structure is checked here."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mlflow_monitor_plugin.cli.run import run_command

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "examples" / "deploy" / "kubernetes"
RULES = REPO / "examples" / "deploy" / "prometheus" / "rules.yaml"
OPERATOR = "monitoring.coreos.com/v1"  # the Prometheus Operator's API group
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
        if doc["apiVersion"] == OPERATOR:
            continue  # a custom resource: the tests below
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


# -- the Prometheus Operator's resources (monitoring.yaml) ----------------------------------------
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def test_servicemonitor_scrapes_the_statefulsets_metrics_port():
    monitor = by_kind("monitoring.yaml")["ServiceMonitor"]
    service = by_kind("statefulset.yaml")["Service"]
    assert monitor["apiVersion"] == OPERATOR and monitor["metadata"]["name"]
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert DURATION.fullmatch(endpoint["interval"])
    # the operator names the job after the Service: the job the rules select
    assert "jobLabel" not in spec
    jobs = set(re.findall(r'job="([^"]*)"', RULES.read_text()))
    assert jobs == {service["metadata"]["name"]}


def test_prometheusrule_holds_exactly_the_groups_of_rules_yaml():
    kinds = by_kind("monitoring.yaml")
    rule = kinds["PrometheusRule"]
    assert rule["apiVersion"] == OPERATOR and rule["metadata"]["name"]
    # the label a Prometheus selects both by (its serviceMonitorSelector and ruleSelector)
    assert rule["metadata"]["labels"] == kinds["ServiceMonitor"]["metadata"]["labels"]
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for r in group["rules"]:
            assert set(r) <= RULE_KEYS and ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], str) and DURATION.fullmatch(r.get("for", "0s"))
            for mapping in (r.get("labels", {}), r.get("annotations", {})):
                assert all(isinstance(v, str) for v in mapping.values()), r
