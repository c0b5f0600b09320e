"""The ops kit (examples/deploy/grafana, examples/deploy/prometheus): the alert rules pass
`promtool`, with a unit test per alert; the dashboard is Grafana dashboard JSON whose queries
parse; and every metric the dashboard and the rules name is on a real daemon's /metrics, so a
renamed metric fails here rather than on an operator's screen."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.observe.windows import wilson
from tests.conftest import free_port
from tests.survival import start_daemon, wait_until
from tests.traces_factory import log_traces

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "examples" / "deploy" / "grafana" / "mlflow-monitor.json"
RULES = REPO / "examples" / "deploy" / "prometheus" / "rules.yaml"
RULE_TESTS = Path(__file__).resolve().parent / "prometheus" / "rules_test.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SYNTHETIC = {"up"}  # series Prometheus itself writes for every target, never on /metrics
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}


def promtool() -> str:
    """promtool's path; a skip where it is missing, a failure when it is required (CI)."""
    path = shutil.which("promtool")
    if path is None:
        why = "promtool not found (Debian and Ubuntu: apt-get install prometheus)"
        if os.environ.get("MLFLOW_MONITOR_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"MLFLOW_MONITOR_REQUIRE_PROMTOOL=1 but {why}")
        pytest.skip(why)
    return path


# -- PromQL: the metric names an expression selects ----------------------------------------------
_TOKEN = re.compile(
    r"""
      "(?:\\.|[^"\\])*" | '(?:\\.|[^'\\])*' | `[^`]*`   # strings
    | \$\{[^}]*\} | \$\w+                                # Grafana variables
    | \d[\w.]*(?:[eE][+-]?\d+)?                          # numbers and durations
    | [A-Za-z_:][\w:]*                                   # identifiers
    | \S                                                 # anything else: one character
    """,
    re.X,
)
_IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def _closing(tokens: list[str], start: int) -> int:
    """The index of the parenthesis that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {' '.join(tokens)!r}")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords, label names (in ``{...}`` or after ``by``/``on``/...), durations
    or Grafana variables; plus ``{__name__="..."}`` matchers."""
    tokens = _TOKEN.findall(expr)
    names: set[str] = set()
    braces = brackets = 0
    i = 0
    while i < len(tokens):
        token, following = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in "{}[]":
            braces += {"{": 1, "}": -1}.get(token, 0)
            brackets += {"[": 1, "]": -1}.get(token, 0)
        elif braces and token == "__name__":
            if following != "=" or tokens[i + 2] in ("~", "="):
                raise ValueError(f"cannot check a __name__ matcher that is not '=': {expr!r}")
            names.add(tokens[i + 2][1:-1])
            i += 2
        elif braces or brackets or not _IDENTIFIER.fullmatch(token):
            pass
        elif token.lower() in _LABEL_LISTS and following == "(":
            i = _closing(tokens, i + 1)
        elif following != "(" and token.lower() not in _KEYWORDS | _AGGREGATIONS | _LABEL_LISTS:
            names.add(token)
        i += 1
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (judge, value) (rate(a_total{x="b_total", y=~"$v"}[$__rate_interval]))',
         {"a_total"}),
        ("sum(rate(a[5m])) by (judge) / on(instance) group_left(pod) b offset 1h", {"a", "b"}),
        ("time() - (c > 0 or d{job='x'}) > 3 * e and ignoring(z) f unless g", set("cdefg")),
        ('{__name__="h_bucket", le="+Inf"} > bool 1e3 atan2 Inf', {"h_bucket"}),
        ("histogram_quantile(0.95, sum without (le) (rate(k:rate5m[1h:5m] @ end())))",
         {"k:rate5m"}),
        ("count(count by (x) (m)) - topk(3, n) + vector(NaN)", {"m", "n"}),
    ],
)  # fmt: skip
def test_metric_names_finds_the_metrics_and_only_them(expr, names):
    assert metric_names(expr) == names


def test_metric_names_refuses_what_it_cannot_check():
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__=~"mlflow_monitor_.*"}')


# -- what the kit queries ------------------------------------------------------------------------
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict]) -> list[dict]:
    """Every panel, those inside collapsed rows too."""
    return [p for item in items for p in [item, *panels(item.get("panels", []))]]


def dashboard_queries() -> list[str]:
    """The PromQL of every panel target and of every query variable (``label_values``'s
    series selector)."""
    board = dashboard()
    exprs = [t["expr"] for p in panels(board["panels"]) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\)\s*", query)
        exprs.append(match.group(1) if match else query)
    return exprs


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_kit_queries_the_metrics_it_is_about():
    dash = set().union(*map(metric_names, dashboard_queries()))
    rules = set().union(*map(metric_names, rule_queries()))
    assert {
        "mlflow_monitor_judge_call_seconds_bucket",
        "mlflow_monitor_judge_tokens_total",
        "mlflow_monitor_judge_concurrency_throttled",
        "mlflow_monitor_budget_factor",
    } <= dash
    assert {"up", "mlflow_monitor_lag_seconds", "mlflow_monitor_export_failures_total"} <= rules


# -- the rules -------------------------------------------------------------------------------------
def test_promtool_accepts_the_rules():
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_each_alert_passes_its_promtool_unit_test():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert tested == alerts  # every alert fires in a test (and is quiet in another)
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the dashboard ---------------------------------------------------------------------------------
def test_dashboard_is_grafana_dashboard_json_on_a_prometheus_variable():
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"]) and board["title"]
    assert board.get("id") is None  # an importable dashboard carries no database id
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"experiment", "judge"} <= {n for n, v in variables.items() if v["type"] == "query"}
    every = panels(board["panels"])
    assert len({p["id"] for p in every}) == len(every)
    shown = [p for p in every if p["type"] != "row"]
    assert len(shown) >= 15
    for panel in shown:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        assert all(t["datasource"] == DATASOURCE and t["expr"] for t in panel["targets"])
        assert panel.get("repeat") in (None, *variables)
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    used = {m for q in dashboard_queries() for m in re.findall(r"\$\{?(\w+)", q)}
    titles = " ".join(p["title"] for p in shown)
    used |= set(re.findall(r"\$\{?(\w+)", titles))
    assert used - BUILTIN_VARIABLES <= set(variables), used - BUILTIN_VARIABLES - set(variables)


def test_dashboard_panels_fit_the_grid_without_overlapping():
    boxes = [p["gridPos"] for p in panels(dashboard()["panels"])]
    for box in boxes:
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24 and box["h"] > 0
    for n, a in enumerate(boxes):
        for b in boxes[n + 1 :]:
            apart_x = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
            apart_y = a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
            assert apart_x or apart_y, (a, b)


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool parses each query as a recording rule, with Grafana's variables filled in."""
    values = {"job": "mlflow-monitor", "experiment": ".*", "judge": "safety", "window": "1h",
              "__rate_interval": "1m"}  # fmt: skip
    rules = [
        {"record": f"dashboard:query_{n}",
         "expr": re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)}
        for n, expr in enumerate(dashboard_queries())
    ]  # fmt: skip
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_pass_rate_band_is_the_monitors_wilson_interval(tmp_path):
    """promtool evaluates the pass-rate panel's three queries on made-up counters: the rate
    and the package's own Wilson interval, for a judge with both values and one with no pass."""
    panel = next(p for p in panels(dashboard()["panels"]) if p.get("repeat") == "judge")
    assert [t["legendFormat"] for t in panel["targets"]] == ["pass rate", "low95", "high95"]
    series = 'mlflow_monitor_verdicts_total{{experiment="1", judge="{}", value="{}"}}'
    inputs, cases = [], []
    for judge, yes, no in (("safety", 3, 1), ("polite", 0, 2)):  # a minute's verdicts, for 1h
        for value, n in (("yes", yes), ("no", no), ("other", 5)):  # "other" is not counted
            if n:  # a value never given has no series (the judge with no pass)
                inputs.append({"series": series.format(judge, value), "values": f"0+{n}x60"})
        variables = {"job": "", "experiment": ".*", "judge": judge, "window": "1h"}
        expected = (yes / (yes + no), *wilson(60 * yes, 60 * (yes + no)))
        for target, value in zip(panel["targets"], expected, strict=True):
            expr = re.sub(r"\$\{?(\w+)\}?", lambda m, v=variables: v[m.group(1)], target["expr"])
            cases.append({
                "expr": f"abs(({expr}) - {value!r}) < bool 1e-9",  # promtool compares exactly
                "eval_time": "60m", "exp_samples": [{"labels": "{}", "value": 1}],
            })  # fmt: skip
    test = {"interval": "1m", "input_series": inputs, "promql_expr_test": cases}
    path = tmp_path / "pass_rate_test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [], "tests": [test]}))
    done = subprocess.run(
        [promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


# -- against a real daemon -----------------------------------------------------------------------
def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """Sample name -> {labels: value} of one scrape. A sample name is what a query selects:
    ``_bucket``/``_sum``/``_count`` exist only for histograms (and summaries), ``_total`` only
    for counters, so a name with the wrong suffix for its metric's type is missing too."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        body = response.read()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_every_metric_of_the_dashboard_and_the_rules_is_on_a_daemons_metrics(
    sqlite_experiment_id, fake_judge, tmp_path
):
    from mlflow.genai.judges.utils import get_default_model

    fake_judge.behaviour.scripted = ["429"]  # the first judge call is throttled, then retried
    fake_judge.behaviour.retry_after_s = 0.1
    log_traces(6, retriever=False)
    log_traces(6, retriever=False, prefix="UNSAFE")
    price = {"input_per_million": 1.0, "output_per_million": 2.0}
    create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "safety"}, {"name": "pii_detection"}]},
        # $0.001 a call expected: the budget lets 4 calls through, then stops the day
        cost={"daily_budget_usd": 0.0045, "call_cost_usd": 0.001,
              "prices": {get_default_model(): price}},
    )  # fmt: skip
    needed = set().union(*map(metric_names, dashboard_queries() + rule_queries())) - SYNTHETIC
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = start_daemon(
        tmp_path / "daemon.log", "-x", sqlite_experiment_id, "--interval", "1",
        "--metrics-port", str(port),
    )  # fmt: skip
    seen: dict[str, dict[tuple, float]] = {}

    def complete() -> bool:
        nonlocal seen
        try:
            seen = scrape(url)
        except OSError:
            return False  # not serving yet
        return needed <= set(seen)

    try:
        wait_until(complete, 60, every_s=0.5)  # a few seconds when nothing is missing
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    missing = needed - set(seen)
    assert not missing, f"named by the dashboard or the rules, not on /metrics: {sorted(missing)}"
    exp = (("experiment", sqlite_experiment_id),)
    safety = (*exp, ("judge", "safety"))
    assert seen["mlflow_monitor_judge_concurrency_throttled"][()] == 1
    assert seen["mlflow_monitor_budget_factor"][exp] == 0  # the budget binds for today
    verdicts = sum(
        v for k, v in seen["mlflow_monitor_verdicts_total"].items() if ("judge", "safety") in k
    )
    assert verdicts >= 1
    # the fake judge's every reply used 20 tokens: 10 in at $1/M, 10 out at $2/M
    assert seen["mlflow_monitor_judge_tokens_total"][safety] == 20 * verdicts
    assert seen["mlflow_monitor_judge_cost_usd_total"][safety] == pytest.approx(3e-5 * verdicts)
    assert seen["mlflow_monitor_healthy"][()] == 1
    assert seen["mlflow_monitor_export_failures_total"][exp] == 0
