"""MLflow's AI Gateway in tests: an endpoint on a real `mlflow server` whose OpenAI provider is
the fake judge, created with the REST calls MLflow's UI makes (MlflowClient has no gateway
methods in 3.17). The server needs GATEWAY_ENV to call a judge on loopback over http."""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

GATEWAY_ENV = {
    "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https",
}
JUDGE_ENVS = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL",
              "MLFLOW_GENAI_JUDGE_DEFAULT_MODEL", "MLFLOW_GATEWAY_URI")  # fmt: skip


def call(server_url: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """One REST call to the server; raises on an HTTP error, with the server's answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            text = reply.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None
    return json.loads(text or b"{}")


def create_endpoint(server_url: str, judge_url: str, name: str | None = None) -> str:
    """A gateway endpoint whose OpenAI provider is ``judge_url``, the key held by the server."""
    name = name or f"judge-{uuid.uuid4().hex[:8]}"
    api = "/api/3.0/mlflow/gateway"
    secret = call(server_url, "POST", f"{api}/secrets/create", {
        "secret_name": f"{name}-key", "secret_value": {"api_key": "sk-held-by-the-gateway"},
        "provider": "openai", "auth_config": {"api_base": judge_url},
    })["secret"]  # fmt: skip
    model = call(server_url, "POST", f"{api}/model-definitions/create", {
        "name": f"{name}-model", "secret_id": secret["secret_id"], "provider": "openai",
        "model_name": "gpt-4o-mini",
    })["model_definition"]  # fmt: skip
    call(server_url, "POST", f"{api}/endpoints/create", {
        "name": name, "usage_tracking": False,
        "model_configs": [{"model_definition_id": model["model_definition_id"],
                           "linkage_type": "PRIMARY", "weight": 1.0}],
    })  # fmt: skip
    return name


def register_ui_judge(
    server_url: str,
    experiment_id: str,
    name: str,
    instructions: str,
    model: str,
    sample_rate: float | None = 1.0,
    filter_string: str | None = None,
    session: bool = False,
) -> None:
    """A judge made as the Judges page's "New LLM judge" form makes it: ``register`` with the
    serialized scorer it builds, then ``online-config`` with the sample rate and filter."""
    serialized = {
        "mlflow_version": "3.3.2+ui", "serialization_version": 1,
        "is_session_level_scorer": session, "name": name, "aggregations": [],
        "builtin_scorer_class": None, "builtin_scorer_pydantic_data": None,
        "call_source": None, "call_signature": None, "original_func_name": None,
        "instructions_judge_pydantic_data": {
            "instructions": instructions, "model": model,
            "feedback_value_type": {"type": "boolean"},
        },
    }  # fmt: skip
    ajax = "/ajax-api/3.0/mlflow/scorers"
    call(server_url, "POST", f"{ajax}/register", {
        "experiment_id": experiment_id, "name": name, "serialized_scorer": json.dumps(serialized),
    })  # fmt: skip
    if sample_rate is not None:
        call(server_url, "PUT", f"{ajax}/online-config", {
            "experiment_id": experiment_id, "name": name, "sample_rate": sample_rate,
            "filter_string": filter_string,
        })  # fmt: skip
