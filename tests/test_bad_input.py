"""Bad input, each met with a clear message and nothing lost: hand-edited config tags, an
experiment deleted while monitored, odd trace content, an export destination that turns read-only
or disappears."""

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.config.tags import CONFIG_TAG
from mlflow_monitor_plugin.engine.daemon import Daemon
from mlflow_monitor_plugin.engine.pipeline import EngineSettings
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.survival import (
    audit,
    expected_pairs,
    export_counts,
    export_ids,
    start_daemon,
    wait_until,
)
from tests.traces_factory import log_traces

PII = {"pii_detection": 1.0}
SETTINGS = EngineSettings(scoring=ScoringSettings(workers=4, attempts=1))


def monitored(name, traces=3, suite=None):
    mlflow.set_experiment(name)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config=suite or {"assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip
    return m, log_traces(traces, retriever=False, prefix=name)


def run_once(*args):
    return CliRunner().invoke(monitor_cli, ["run", "--once", *args])


def assert_served(m, ids, rates=PII):
    assert audit(m.experiment_id, m.monitor_id).complete == expected_pairs(ids, m.monitor_id, rates)
    assert export_counts(m.export_uri) == (len(ids), len(ids))


def _invalid_json(tags):
    return {CONFIG_TAG: tags[CONFIG_TAG][:-1]}  # a closing brace lost to a hand edit


def _unknown_schema(tags):
    return {CONFIG_TAG: json.dumps({**json.loads(tags[CONFIG_TAG]), "schema_version": 99})}


def _missing_part(tags):
    parts = sorted(k for k in tags if k.startswith(CONFIG_TAG + ".v"))
    assert len(parts) >= 2, "the config should be split across tags"
    return {parts[1]: None}


BIG_SUITE = {  # a config over the 20,000-character tag limit, split across tags
    "assessments": [
        {"name": "pii_detection"},
        {"name": "regex_match", "args": {"pattern": "|".join(f"w{i}" for i in range(5000))}},
    ]
}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_invalid_json, "not valid JSON"),
        (_unknown_schema, "schema_version"),
        (_missing_part, "missing"),
    ],
)
def test_hand_edited_config_fails_its_monitor_clearly_and_the_others_are_served(
    sqlite_uri, corrupt, message
):
    good, good_ids = monitored("good")
    bad, bad_ids = monitored("bad", suite=BIG_SUITE if corrupt is _missing_part else None)
    client = MlflowClient()
    original = dict(client.get_experiment(bad.experiment_id).tags)
    for key, value in corrupt(original).items():
        if value is None:
            client.delete_experiment_tag(bad.experiment_id, key)
        else:
            client.set_experiment_tag(bad.experiment_id, key, value)

    result = run_once()
    assert result.exit_code == 1, result.output
    assert f"experiment {bad.experiment_id}" in result.output and message in result.output
    assert_served(good, good_ids)
    assert not audit(bad.experiment_id, bad.monitor_id).complete  # nothing half-done

    for key, value in original.items():  # the tag is fixed: nothing was lost meanwhile
        if key.startswith(CONFIG_TAG):
            client.set_experiment_tag(bad.experiment_id, key, value)
    result = run_once()
    assert result.exit_code == 0, result.output
    rates = {"pii_detection": 1.0, "regex_match": 1.0} if corrupt is _missing_part else PII
    assert_served(bad, bad_ids, rates)


def test_experiment_deleted_while_monitored_does_not_stop_the_daemon(sqlite_uri, tmp_path):
    doomed, doomed_ids = monitored("doomed")
    kept, kept_ids = monitored("kept")
    daemon = start_daemon(tmp_path / "daemon.log", "--interval", "1")

    def served(m, ids):
        return lambda: (
            audit(m.experiment_id, m.monitor_id).complete == expected_pairs(ids, m.monitor_id, PII)
        )

    try:
        assert wait_until(served(doomed, doomed_ids), 30), daemon.log()[-2000:]
        assert wait_until(served(kept, kept_ids), 30), daemon.log()[-2000:]
        mlflow.delete_experiment(doomed.experiment_id)
        mlflow.set_experiment(experiment_id=kept.experiment_id)
        kept_ids += log_traces(2, retriever=False, prefix="later")
        assert wait_until(served(kept, kept_ids), 20), daemon.log()[-2000:]
        assert daemon.process.poll() is None, f"the daemon died: {daemon.log()[-1000:]}"
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    assert_served(kept, kept_ids)


def test_restored_experiment_is_served_again_at_once(sqlite_uri):
    doomed, ids = monitored("doomed")
    monitored("kept")
    daemon = Daemon(settings=SETTINGS)
    daemon.run_pass()
    mlflow.delete_experiment(doomed.experiment_id)
    daemon.run_pass()
    MlflowClient().restore_experiment(doomed.experiment_id)
    mlflow.set_experiment(experiment_id=doomed.experiment_id)
    ids += log_traces(2, retriever=False, prefix="restored")
    report = daemon.run_pass()
    skipped = {s.experiment_id: s.skipped for s in report.stats if s.skipped}
    assert not skipped, f"the daemon locked itself out of the restored experiment: {skipped}"
    assert_served(doomed, ids)
    daemon.release()


def _span(name, inputs=None, outputs=None):
    span = mlflow.start_span_no_context(name, inputs=inputs)
    if outputs is not None:
        span.set_outputs(outputs)
    span.end()
    return span.trace_id


def _nested(depth, leaf):
    value = leaf
    for i in range(depth):
        value = {"level": depth - i, "child": value} if i % 2 else [value]
    return value


ODD_TEXT = (
    "emoji 🤖🔥👩‍👩‍👧 NUL[\x00] bell[\x07] mixed: Ελληνικά Русский 中文 العربية עברית हिन्दी "
    'escape-looking: \\ud800 \\udfff \\x00 \\u12 \\N{BULLET} %s {0} ${x} \\\\ "quoted" \' '
    "zero-width[\u200b] rtl[\u202e] bom[\ufeff] max[\U0010fffd]"
)


def test_odd_traces_are_scored_or_not_applicable_and_exported(sqlite_uri, fake_judge):
    m, _ = monitored(
        "odd", traces=0,
        suite={"assessments": [{"name": "safety"}, {"name": "relevance_to_query"},
                               {"name": "pii_detection"},
                               {"name": "response_length", "args": {"max_length": 1000}}]},
    )  # fmt: skip
    big = "All work and no play makes Jack a dull boy. " * 120_000  # ~5 MB
    odd = {
        "empty": _span("empty"),
        "big": _span("big", {"q": "tell me a story"}, big),
        "unicode": _span("unicode", {"q": ODD_TEXT}, ODD_TEXT),
        "deep": _span("deep", {"q": _nested(200, "bottom")}, _nested(200, "answer")),
        "no_outputs": _span("no_outputs", {"q": "hello"}),
    }
    result = run_once()
    assert result.exit_code == 0, result.output
    found = audit(m.experiment_id, m.monitor_id)
    assert not found.errors, found.error_messages
    assert not found.partial
    judged = {judge for (t, judge) in found.complete if t == odd["big"]}
    assert judged == {"safety", "relevance_to_query", "pii_detection", "response_length"}
    for name in ("unicode", "deep"):
        assert {j for (t, j) in found.complete if t == odd[name]} == judged, name
    assert not [p for p in found.complete if p[0] in (odd["empty"], odd["no_outputs"])]
    assert set(found.complete.values()) == {1}

    assert sorted(export_ids(m.export_uri)) == sorted(odd.values())
    assert export_counts(m.export_uri) == (5, 5)
    rows = dict(
        duckdb.sql(
            f"select trace_id, response from read_parquet('{m.export_uri}/**/*.parquet')"
        ).fetchall()
    )
    assert json.loads(rows[odd["unicode"]]) == ODD_TEXT
    assert json.loads(rows[odd["big"]]) == big
    assert json.loads(rows[odd["deep"]]) == _nested(200, "answer")


@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` and its sub-directories read-only, even for root (the immutable flag)."""
    dirs = [path, *(p for p in path.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(0o555)
    immutable = False
    if os.access(path, os.W_OK) and shutil.which("chattr"):  # root ignores the mode bits
        done = subprocess.run(["chattr", "+i", *map(str, dirs)], capture_output=True)
        immutable = done.returncode == 0
    try:
        probe = path / ".probe"
        try:
            probe.touch()
            probe.unlink()
            pytest.skip("no way to make a directory read-only here (root, and no chattr support)")
        except OSError:
            pass
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *map(str, dirs)], check=True)
        for d in dirs:
            d.chmod(0o755)


def test_read_only_export_destination_is_a_clear_error_and_export_resumes(sqlite_uri):
    m, ids = monitored("readonly", traces=4)
    assert run_once().exit_code == 0
    export_dir = Path(m.export_uri)
    assert export_counts(m.export_uri) == (4, 4)
    more = log_traces(3, retriever=False, prefix="while-read-only")
    with read_only(export_dir):
        result = run_once()
        assert result.exit_code == 1
        assert "export failed" in result.output and str(export_dir) in result.output
        # scoring went on without the export
        assert {(t, "pii_detection") for t in more} <= set(
            audit(m.experiment_id, m.monitor_id).complete
        )
    result = run_once()
    assert result.exit_code == 0, result.output
    assert_served(m, ids + more)


def test_export_directory_deleted_between_passes_is_rebuilt_without_duplicates(sqlite_uri):
    m, ids = monitored("vanishing", traces=4)
    daemon = Daemon(settings=SETTINGS)
    now = int(time.time() * 1000)
    assert daemon.run_pass(now).ok
    assert export_counts(m.export_uri) == (4, 4)
    shutil.rmtree(m.export_uri)
    ids += log_traces(3, retriever=False, prefix="after-delete")
    report = daemon.run_pass(now + 1000)
    assert report.ok, report.errors or [s.export_error for s in report.stats]
    assert export_counts(m.export_uri)[0] >= 3  # the export goes on
    daemon.run_pass(now + 130_000)  # the next sweep restores the traces lost with the directory
    assert_served(m, ids)
