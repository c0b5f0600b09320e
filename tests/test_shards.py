"""Shards: replicas split a monitor's traces; a change of their number or a dead replica loses
nothing and does nothing twice (docs/scaling.md)."""

import json
import time
import uuid
from collections import Counter
from dataclasses import replace

import mlflow
import pytest

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.config.tags import NAMESPACE
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.shards import (
    LEGACY,
    Layout,
    Shard,
    handover,
    parse_shard,
    shard_from_hostname,
)
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.observe.windows import HOUR_MS, window_start
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.survival import audit, expected_pairs, export_ids
from tests.test_quality import log_at, metric_points, quality
from tests.traces_factory import log_traces

IDS = [f"tr-{i:032x}" for i in range(3000)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6])
def test_every_trace_has_exactly_one_shard(count):
    owners = Counter(sum(Shard(k, count).owns(t) for k in range(count)) for t in IDS)
    assert owners == Counter({1: len(IDS)})


def test_shards_split_the_sampled_traces_evenly_whatever_the_rate():
    sampled = [t for t in IDS if is_sampled(t, "m-1", 0.2)]  # the sampling hash is another one
    sizes = [sum(Shard(k, 4).owns(t) for t in sampled) for k in range(4)]
    assert min(sizes) > 0.8 * len(sampled) / 4, sizes


@pytest.mark.parametrize(
    ("text", "shard"), [("0/1", Shard(0, 1)), ("2/4", Shard(2, 4)), (" 3 / 6 ", Shard(3, 6))]
)
def test_parse_shard(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize(
    ("text", "message"),
    [("4/4", "K from 0 to N - 1 = 3"), ("1", "K/N, e.g. 0/4"), ("0/0", "from 1 to 1024")],
)
def test_parse_shard_names_what_is_allowed(text, message):
    with pytest.raises(MonitorConfigError, match=message):
        parse_shard(text)


def test_shard_from_hostname_is_the_statefulset_ordinal():
    assert shard_from_hostname("mlflow-monitor-3", 6) == Shard(3, 6)
    with pytest.raises(MonitorConfigError, match="ending in -<ordinal>"):
        shard_from_hostname("laptop", 2)
    with pytest.raises(MonitorConfigError, match="K from 0 to N - 1 = 1"):
        shard_from_hostname("mlflow-monitor-2", 2)


def test_shard_state_keys_keep_the_unsharded_daemons_tags():
    assert Shard(0, 1).key("checkpoint") == "checkpoint"
    assert Shard(1, 3).key("lease") == "lease.shard-1-of-3"


def test_handover_starts_at_the_lowest_old_position_and_overlaps_to_the_highest():
    a, b, c = Checkpoint(10, "a"), Checkpoint(20, "b"), Checkpoint(30, "c")
    h = handover([(a, b), (b, c)], sessions=[a, b])
    assert (h.start, h.until, h.sessions) == (a, c, a)
    assert h.in_overlap(30, "c") and not h.in_overlap(30, "d")
    never_ran = handover([(a, b), (None, None)])
    assert never_ran.start is None and never_ran.until == b  # its traces: from the beginning
    assert handover([]).until is None


def test_a_layout_that_never_handed_over_hands_over_from_its_predecessor():
    three = LEGACY.changed_to(3)
    assert (three.epoch, three.previous, three.handover) == (1, (1, 0), None)
    assert three.changed_to(4).previous == (1, 0)  # the 3 shards never ran: nothing of theirs
    assert Layout.from_dict(three.to_dict(), "x") == three
    done = Layout(3, 1, (1, 0), handover([(Checkpoint(5, "a"), Checkpoint(7, "b"))]))
    four = done.changed_to(4)
    assert (four.previous, four.base) == ((3, 1), done.handover)  # idle shards stood there
    assert Layout.from_dict(four.to_dict(), "x") == four


# -- replicas on a real store -----------------------------------------------------------------
FAST = ScoringSettings(workers=4, attempts=1, backoff_s=0.01, backoff_max_s=0.05)


def settings(shard):
    return EngineSettings(page_size=5, scoring=FAST, shard=shard, windows=False)


def replica(experiment_id, k, n):
    return MonitorEngine.create(experiment_id, settings(Shard(k, n)))


@pytest.fixture
def store_experiment_id(store_uri):
    """A new experiment on a SQLite store, or on `mlflow server` on PostgreSQL."""
    return mlflow.set_experiment(f"exp-{uuid.uuid4().hex[:12]}").experiment_id


def test_resharding_after_a_replica_died_mid_page_scores_and_exports_each_trace_once(
    store_experiment_id, fake_judge, tmp_path
):
    exp = store_experiment_id
    ids = log_traces(30, retriever=False)
    rates = {"safety": 0.5, "pii_detection": 0.5}
    m = create_external_monitor(
        catalog_name="w", schema_name="d", export_uri=str(tmp_path / "export"),
        assessments_config={"sample": 0.5, "assessments": [{"name": "safety"},
                                                          {"name": "pii_detection"}]},
    )  # fmt: skip
    a, b = replica(exp, 0, 2), replica(exp, 1, 2)
    a.run_pass(max_pages=3)
    b.run_pass(max_pages=1)
    b_key = NAMESPACE + "checkpoint.shard-1-of-2"
    before = mlflow.MlflowClient().get_experiment(exp).tags[b_key]
    b.run_pass(max_pages=1)  # its verdicts and export land, then it "dies" before its checkpoint:
    mlflow.MlflowClient().set_experiment_tag(exp, b_key, before)  # its lease stays, held
    ids += log_traces(20, retriever=False, prefix="more")

    new = [replica(exp, k, 3) for k in range(3)]
    waiting = new[0].run_pass()
    assert "waiting for the replicas of the previous layout (2 shards)" in waiting.skipped
    fenced = a.run_pass()  # the live old replica stands by from now on, and lets its lease go
    assert "now runs as 3 shard(s)" in fenced.skipped
    assert "restart it with --shard 0/3 (each replica its own K from 0 to 2" in fenced.skipped
    assert new[0].run_pass().skipped  # the dead one's lease has not expired yet
    later = int(mlflow.MlflowClient().get_experiment(exp).last_update_time) + 120_000
    for _ in range(6):  # until idle
        stats = [engine.run_pass(now_ms=later) for engine in new]
        assert not any(s.skipped for s in stats)
        if not any(s.traces for s in stats):
            break

    layout = json.loads(mlflow.MlflowClient().get_experiment(exp).tags[NAMESPACE + "layout"])
    assert layout["shards"] == 3 and layout["handover"]["until"] is not None
    found = audit(exp, m.monitor_id)
    assert found.complete == expected_pairs(ids, m.monitor_id, rates)
    assert not found.partial and not found.errors
    # Nothing judged twice: one judge call per sampled safety pair, over both layouts.
    assert fake_judge.count("ok") == sum(1 for t in ids if is_sampled(t, m.monitor_id, 0.5))
    exported = export_ids(m.export_uri)
    assert sorted(exported) == sorted(ids)  # every trace once, in one dataset


def test_a_fenced_replica_is_told_its_own_new_shard_or_that_it_is_one_too_many(
    sqlite_experiment_id,
):
    log_traces(3, retriever=False)
    create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip
    old = [replica(sqlite_experiment_id, k, 3) for k in range(3)]
    for engine in old:
        engine.run_pass()
    replica(sqlite_experiment_id, 0, 2).run_pass()  # the monitor now runs as 2 shards
    assert "restart it with --shard 1/2 (" in old[1].run_pass().skipped
    assert "the new layout has no shard 2: stop this replica" in old[2].run_pass().skipped


def test_two_replicas_of_one_shard_are_active_and_standby(sqlite_experiment_id):
    log_traces(4, retriever=False)
    create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip
    first, second = replica(sqlite_experiment_id, 1, 2), replica(sqlite_experiment_id, 1, 2)
    assert not first.run_pass().skipped
    assert second.run_pass().skipped == "another daemon holds its lease"
    assert not replica(sqlite_experiment_id, 0, 2).run_pass().skipped  # another shard: works


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shard", "3/3"], {}, "K from 0 to N - 1 = 2"),
        (["--shard-from-hostname"], {"HOSTNAME": "mon-1"}, "--shards N"),
        (["--shard-from-hostname", "--shards", "2"], {"HOSTNAME": "laptop"}, "-<ordinal>"),
        (["--shard", "0/2", "--shards", "3"], {}, "--shard 0/2 is of 2 shards, --shards 3"),
        (["--shards", "3"], {}, "goes with --shard-from-hostname"),
    ],
)
def test_run_refuses_a_bad_shard_with_exit_2(args, env, message):
    from click.testing import CliRunner

    from mlflow_monitor_plugin.cli import monitor

    result = CliRunner().invoke(monitor, ["run", "--once", *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_run_once_from_a_statefulset_hostname_works_its_shard(sqlite_experiment_id, monkeypatch):
    from click.testing import CliRunner

    from mlflow_monitor_plugin.cli import monitor

    ids = log_traces(12, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip
    env = {"HOSTNAME": "mlflow-monitor-1", "MLFLOW_MONITOR_SHARDS": "2"}
    args = ["run", "--once", "-x", sqlite_experiment_id, "--shard-from-hostname", "--no-export"]
    result = CliRunner().invoke(monitor, args, env=env)
    assert result.exit_code == 0, result.output
    judged = {t for t, _ in audit(sqlite_experiment_id, m.monitor_id).complete}
    assert judged == {t for t in ids if Shard(1, 2).owns(t)}
    status = CliRunner().invoke(monitor, ["status", "-x", sqlite_experiment_id, "--output", "json"])
    shards = json.loads(status.output)["shards"]
    assert [s["shard"] for s in shards] == ["0/2", "1/2"]
    assert shards[0]["checkpoint"] is None and shards[1]["checkpoint"] is not None
    assert json.loads(status.output)["checkpoint"] is None  # the lowest: shard 0 never ran


def test_a_restarted_container_takes_its_dead_predecessors_lease_at_once():
    """A StatefulSet pod restarted under the same name, as pid 1 again: the lease's owner names
    the same host and pid, but a process started at another time."""
    from mlflow_monitor_plugin.engine.lease import holder_alive, new_owner

    me = new_owner()
    host, pid, _, started = me.split(":")
    assert started.isdigit()  # Linux
    assert holder_alive({"owner": me})
    assert holder_alive({"owner": f"{host}:{pid}:0badc0de:{started}"})  # another engine of ours
    assert not holder_alive({"owner": f"{host}:{pid}:0badc0de:{int(started) - 1}"})
    assert holder_alive({"owner": f"{host}:{pid}:0badc0de"})  # an owner written before: as before
    assert holder_alive({"owner": f"elsewhere:{pid}:0badc0de:1"})


def test_an_unsharded_daemon_mid_pass_stops_after_its_page_when_shards_take_over(
    sqlite_experiment_id, fake_judge, tmp_path
):
    import threading
    import time

    exp = sqlite_experiment_id
    ids = log_traces(40, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d", export_uri=str(tmp_path / "export"),
        assessments_config={"assessments": [{"name": "safety"}]},
    )  # fmt: skip
    fake_judge.behaviour.latency_s = 0.1  # a page of 5 takes a while: the pass is long
    old = MonitorEngine.create(exp, EngineSettings(page_size=5, scoring=FAST, windows=False))
    result = {}
    worker = threading.Thread(target=lambda: result.update(stats=old.run_pass()))
    worker.start()
    client = mlflow.MlflowClient()
    while NAMESPACE + "checkpoint" not in client.get_experiment(exp).tags:
        time.sleep(0.05)  # its first page is done
    new = [replica(exp, k, 2) for k in range(2)]
    assert "waiting for the replicas of the previous layout (1 shards)" in new[0].run_pass().skipped
    worker.join(60)
    assert result["stats"].traces < 40  # it stopped early, after the page(s) in flight
    assert not old.lease.held  # and let its lease go
    for _ in range(6):
        stats = [engine.run_pass() for engine in new]
        assert not any(s.skipped for s in stats)
        if not any(s.traces for s in stats):
            break
    found = audit(exp, m.monitor_id)
    assert found.complete == expected_pairs(ids, m.monitor_id, {"safety": 1.0})
    assert fake_judge.count("ok") == len(ids)
    assert sorted(export_ids(m.export_uri)) == sorted(ids)
    assert "now runs as 2 shard(s)" in old.run_pass().skipped


def test_a_layout_whose_shards_saved_no_cursor_hands_over_what_the_one_before_did(
    sqlite_experiment_id, tmp_path
):
    exp = sqlite_experiment_id
    ids = log_traces(12, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d", export_uri=str(tmp_path / "export"),
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip
    single = MonitorEngine.create(exp, EngineSettings(scoring=FAST, windows=False))
    assert single.run_pass().traces == 12
    legacy = single.read_cursor(m).score
    single.release_lease()  # it stops
    two = replica(exp, 0, 2)
    stats = two.run_pass()
    assert not stats.skipped and stats.traces == 0  # nothing new: it saves no cursor
    ids += log_traces(5, retriever=False, prefix="more")
    new = [replica(exp, k, 3) for k in range(3)]
    assert new[0].run_pass().skipped  # it claims the layout, and waits for shard 0/2
    assert two.run_pass().skipped  # which stands by now
    runs = [engine.run_pass() for engine in new]
    assert sum(s.traces for s in runs) == 5, [s.skipped for s in runs]  # the 12 done: not walked
    layout = json.loads(mlflow.MlflowClient().get_experiment(exp).tags[NAMESPACE + "layout"])
    assert layout["handover"]["start"] == layout["handover"]["until"] == legacy.to_dict()
    assert sorted(export_ids(m.export_uri)) == sorted(ids)
    expected = expected_pairs(ids, m.monitor_id, {"pii_detection": 1.0})
    assert audit(exp, m.monitor_id).complete == expected


def test_sessions_are_sharded_by_session_id(sqlite_experiment_id, fake_judge):
    import time

    from tests.test_sessions import session_verdicts
    from tests.traces_factory import log_agent_traces

    sessions = [f"chat-{i}" for i in range(6)]
    for s in sessions:
        log_agent_traces(1, session=s, prefix=s)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "user_frustration"}]},
    )  # fmt: skip
    quiet = int(time.time() * 1000) + 400_000  # every session is quiet by then
    shards = [replica(sqlite_experiment_id, k, 2) for k in range(2)]
    judged = []
    for k, engine in enumerate(shards):
        before = set(session_verdicts(sqlite_experiment_id, m.monitor_id))
        engine.run_pass(now_ms=quiet)
        mine = set(session_verdicts(sqlite_experiment_id, m.monitor_id)) - before
        assert {s for s, _ in mine} == {s for s in sessions if Shard(k, 2).owns(s)}
        judged += mine
    assert sorted(judged) == sorted((s, "user_frustration") for s in sessions)
    assert fake_judge.count("ok") == len(sessions)  # each judged once


def test_shard_0_charts_the_windows_of_every_shard(sqlite_experiment_id, tmp_path):
    exp, now_ms = sqlite_experiment_id, int(time.time() * 1000)
    hour = window_start(now_ms, HOUR_MS) - 3 * HOUR_MS
    ids = [log_at(hour + 60_000 + i * 1000, f"Reply to q{i}") for i in range(20)]
    # traces of the next hour move every shard's cursor past the end of the first
    later = [log_at(hour + HOUR_MS + 60_000 + i * 1000, f"Reply to q{i}") for i in range(10)]
    m = create_external_monitor(
        catalog_name="w", schema_name="d", export_uri=str(tmp_path / "export"),
        assessments_config={"assessments": [{"name": "pii_detection", "sample_rate": 1.0}]},
    )  # fmt: skip
    on = EngineSettings(page_size=5, scoring=FAST, sweep_every_s=0)
    first, second = (MonitorEngine.create(exp, replace(on, shard=Shard(k, 2))) for k in (0, 1))
    assert second.quality is None  # one replica computes the windows
    first.quality.settings = replace(first.quality.settings, settle_s=0, update_every_s=0)
    mine = sum(Shard(0, 2).owns(t) for t in ids)
    assert 0 < mine < len(ids) and 0 < sum(Shard(0, 2).owns(t) for t in later) < len(later)

    first.run_pass(now_ms=now_ms)  # shard 1 has scored nothing yet: nothing settles
    assert metric_points(exp, "pii_detection/verdicts")[1] == []
    assert [r[5] for r in quality(m.export_uri) if r[1] == "1h"][0] == mine
    second.run_pass(now_ms=now_ms)
    first.run_pass(now_ms=now_ms + 1000)  # shard 1's verdicts, read back from the store

    assert [r[3:6] for r in quality(m.export_uri) if r[1] == "1h"] == [(20,) * 3, (10,) * 3]
    _, points = metric_points(exp, "pii_detection/verdicts")
    assert [(p.step, p.value) for p in points] == [(hour // 1000, 20.0)]
    first.run_pass(now_ms=now_ms + 2000)
    assert len(metric_points(exp, "pii_detection/verdicts")[1]) == 1  # charted once
