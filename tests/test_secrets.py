"""No secret leaves the daemon's environment, and nothing read from a tag is ever run.

The judge here echoes credentials back in its error messages, as some OpenAI-compatible proxies
do ("Received API Key = ..."): the realistic way a key reaches an error message, hence error
feedback, the export and the log. Every place the plugin writes is then scanned for the key.
"""

import json
import secrets
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import mlflow
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.config.tags import CONFIG_TAG
from tests.survival import (
    MIXED_SUITE,
    FaultyJudge,
    all_traces,
    audit,
    daemon_env,
    run_cli,
)
from tests.traces_factory import log_traces


@pytest.fixture
def judge():
    with FaultyJudge() as j:
        yield j


def leaks(secret: str, experiment_id: str, export_uri: str, log: str) -> list[str]:
    """Every place the plugin writes to that holds ``secret``."""
    found = []
    tags = MlflowClient().get_experiment(experiment_id).tags
    found += [f"experiment tag {k}" for k, v in tags.items() if secret in k or secret in v]
    for trace in all_traces(experiment_id):
        for a in trace.info.assessments or []:
            if secret in json.dumps(a.to_dictionary(), default=str):
                found.append(f"assessment {a.name} on {trace.info.trace_id}")
        info = trace.info.to_dict()
        info.pop("assessments", None)
        if secret in json.dumps(info, default=str):
            found.append(f"trace info of {trace.info.trace_id}")
    files = [p for p in Path(export_uri).rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files), "nothing was exported to scan"
    for path in files:
        if secret.encode() in path.read_bytes():
            found.append(f"bytes of {path}")
        if path.suffix == ".parquet":
            rows = json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False)
            if secret in rows:
                found.append(f"rows of {path}")
    if secret in log:
        found.append("daemon log")
    return found


def echo_credentials(path: str, headers: dict[str, str], body: str):
    """A judge that repeats the caller's credentials in its error message for some traces."""
    if "LEAK" not in body:
        return None
    key = parse_qs(urlsplit(path).query).get("api-key", [""])[0]
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    message = f"Authentication Error, Received API Key = {auth} api-key={key}"
    return 401, {"error": {"message": message, "type": "auth_error"}}


def monitored_traces():
    mlflow.set_experiment(f"secrets-{uuid.uuid4().hex[:8]}")
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=MIXED_SUITE)
    ids = log_traces(3, retriever=False, prefix="fine")
    ids += log_traces(2, retriever=False, prefix="LEAK")
    ids += log_traces(2, retriever=False, prefix="GARBLED")
    return m, ids


def test_api_key_reaches_no_tag_feedback_export_or_log(sqlite_uri, judge, monkeypatch):
    key = "sk-live-" + secrets.token_hex(24)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OPENAI_API_BASE", judge.url)
    monkeypatch.setenv("OPENAI_BASE_URL", judge.url)
    judge.intercept = echo_credentials
    judge.poison = lambda body: "malformed" if "GARBLED" in body else None
    m, ids = monitored_traces()
    once = ("run", "-x", m.experiment_id, "--once", "--log-level", "DEBUG", "--attempts", "1")
    result = run_cli(*once)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr

    # The key was really sent, and really echoed into error messages: there was a leak to stop.
    sent = [v for h in judge.headers for k, v in h.items() if k.lower() == "authorization"]
    assert f"Bearer {key}" in sent
    found = audit(m.experiment_id, m.monitor_id)
    assert any("Received API Key" in message for message in found.error_messages)
    assert len(found.errors) == 8  # (LEAK + GARBLED traces) x 2 LLM judges
    assert any("DEBUG" in line for line in log.splitlines())
    assert leaks(key, m.experiment_id, m.export_uri, log) == []


def test_key_in_the_judge_url_query_string_works_and_never_leaks(sqlite_uri, judge, monkeypatch):
    """OPENAI_API_BASE=https://gateway/v1?api-key=... is how several gateways take their key."""
    token = "qk-" + secrets.token_hex(24)

    def gateway(path, headers, body):
        url = urlsplit(path)
        if not url.path.endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {url.path}"}}
        if parse_qs(url.query).get("api-key") != [token]:
            return 401, {"error": {"message": "missing or invalid api-key"}}
        return echo_credentials(path, headers, body)

    judge.intercept = gateway
    monkeypatch.setenv("OPENAI_API_KEY", "unused-by-this-gateway")
    monkeypatch.setenv("OPENAI_API_BASE", f"{judge.url}?api-key={token}")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    m, ids = monitored_traces()
    result = run_cli("run", "-x", m.experiment_id, "--once", "--log-level", "DEBUG",
                     "--attempts", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    problems = []
    found = audit(m.experiment_id, m.monitor_id)
    fine = {(t, j) for t in ids[:3] for j in ("safety", "polite")}
    if not fine <= set(found.complete):
        problems.append(f"judge calls failed: {sorted(set(found.error_messages))[:2]}")
    problems += leaks(token, m.experiment_id, m.export_uri, result.stdout + result.stderr)
    assert problems == []


def test_nothing_read_from_a_tag_is_ever_run(sqlite_uri, judge, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + uuid.uuid4().hex)
    monkeypatch.setenv("OPENAI_API_BASE", judge.url)
    monkeypatch.setenv("OPENAI_BASE_URL", judge.url)
    sentinel = tmp_path / "pwned"
    shell = f"touch {sentinel}"
    code = f"__import__('os').system({shell!r})"
    pickled = f"cos\nsystem\n(S'{shell}'\ntR."  # pickle protocol 0: runs `shell` if unpickled
    client = MlflowClient()

    def plant(name, config_change=None, tags=None):
        mlflow.set_experiment(name)
        m = create_external_monitor(
            catalog_name="w", schema_name="d",
            assessments_config={"assessments": [{"name": "pii_detection"}]},
        )  # fmt: skip
        log_traces(2, retriever=False, prefix=name)
        if config_change is not None:
            doc = json.loads(client.get_experiment(m.experiment_id).tags[CONFIG_TAG])
            doc["assessments_config"]["assessments"] = config_change
            client.set_experiment_tag(m.experiment_id, CONFIG_TAG, json.dumps(doc))
        for key, value in (tags or {}).items():
            client.set_experiment_tag(m.experiment_id, key, value)
        return m

    bad = [
        (plant("callable", [{"name": "os.system", "args": {"command": shell}}]), "os.system"),
        (plant("exec", [{"name": "builtins.exec", "args": {"source": code}}]), "builtins.exec"),
        (plant("dunder", [{"name": code}]), "BuiltinJudge.name"),
        (plant("pickled-config", tags={CONFIG_TAG: pickled}), "not valid JSON"),
        (plant("pickled-checkpoint", tags={"mlflow_monitor.checkpoint": pickled}), "checkpoint"),
    ]
    mlflow.set_experiment("plain-text")
    text = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"guidelines": {"os.system": [code, pickled]}}]},
    )  # fmt: skip
    text_ids = log_traces(2, retriever=False, prefix="text")

    result = run_cli("run", "--once", env=daemon_env())
    output = result.stdout + result.stderr
    assert not sentinel.exists(), "a value read from a tag was executed"
    assert result.returncode == 1, output
    for m, message in bad:
        assert f"experiment {m.experiment_id}" in output, output
        line = output.split(f"experiment {m.experiment_id}:", 1)[1][:400]
        assert message in line, line
    # The guideline text is text: sent to the judge verbatim, judged, never run.
    assert any(code in json.dumps(r) for r in judge.requests)
    verdicts = audit(text.experiment_id, text.monitor_id).complete
    assert verdicts == {(t, "os.system"): 1 for t in text_ids}
    assert not sentinel.exists()
