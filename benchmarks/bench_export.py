"""Export throughput: how much does trace -> row -> Parquet add to paging through the traces?

Creates N two-span traces (root + RETRIEVER, every 10th with a judge feedback) in a temporary
SQLite store, then measures
  (a) paging through them with ``MlflowClient.search_traces`` (full traces, spans included), and
  (b) the same paging plus ``ParquetExporter.write_batch`` per page (trace_to_row + Parquet),
and prints a JSON summary (throughputs, their ratio, peak RSS). Progress goes to stderr.

With ``--pii`` (policies, comma-separated: ``standard``, ``hash``), (b) is repeated with each
redaction policy on, and the summary compares each with the policy off: throughput, its ratio,
and CPU per trace. With ``--personal`` every trace carries personal data (its own e-mail
address and phone number in its question, which the request, its preview and both spans'
inputs hold: two distinct texts per trace, the rest copies), so each trace takes the masker's
costly path: recognize new values, then rewrite the texts that hold them.

    .venv/bin/python benchmarks/bench_export.py --traces 2000
    .venv/bin/python benchmarks/bench_export.py --traces 10000 --pii standard,hash \\
        --personal national --rounds 3

``--rounds N`` alternates the measures N times and reports each one's median (a shared
machine's speed drifts). ``--personal national`` writes the numbers in national format
(``(415) 555-0123``), which ``phonenumbers`` tries in each of its 8 regions.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # every trace is in the store on return
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark the working tree

import mlflow
import pyarrow.parquet as pq
from mlflow.entities import AssessmentSource, Span, SpanType, Trace
from mlflow.tracing.client import TracingClient
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.export.parquet import ParquetExporter
from mlflow_monitor_plugin.redaction import SECRET_ENV, masker_for, policy_from
from mlflow_monitor_plugin.redaction.recognizers import load

EXPORTED_AT_MS = 1_800_000_000_000
DAY_MS = 86_400_000


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


EMAIL, PHONE = "alice.smith@example.com", "+1 415-555-2671"
PERSONAL = f"I am {EMAIL}, call me on {PHONE}. "
POLICIES = {
    "standard": {"kinds": "standard"},
    "hash": {"kinds": "standard", "mode": "hash"},
}


def _phone(i: int, national: bool = False) -> str:
    return f"(415) 555-{i % 10_000:04d}" if national else f"+1 415-555-{i % 10_000:04d}"


def _log_with_tracer(i: int, start_ns: int, personal: bool = False) -> str:
    """One trace through the fluent tracing API: complete metadata, but ~30 traces/s on SQLite."""
    question = (PERSONAL if personal else "") + f"question {i}: how do I export traces? " * 4
    root = mlflow.start_span_no_context(
        "app", inputs={"question": question}, start_time_ns=start_ns
    )
    child = mlflow.start_span_no_context(
        "retrieve",
        span_type=SpanType.RETRIEVER,
        parent_span=root,
        inputs={"query": question},
        start_time_ns=start_ns + 1_000,
    )
    child.set_outputs([{"page_content": "doc " * 50, "metadata": {"doc_uri": f"kb/{i}"}}])
    child.end(end_time_ns=start_ns + 2_000_000)
    root.set_outputs({"answer": "use the exporter " * 20})
    root.end(end_time_ns=start_ns + 5_000_000)
    return root.trace_id


def _clone_spans(
    template: list[dict[str, Any]], i: int, start_ns: int, national: bool = False
) -> tuple[str, list[Span]]:
    """The template trace's spans under a new trace id, start time and question."""
    otel_id = secrets.token_bytes(16)
    trace_id = "tr-" + otel_id.hex()
    span_ids = [base64.b64encode(secrets.token_bytes(8)).decode() for _ in template]
    spans = []
    for k, span in enumerate(template):
        d = copy.deepcopy(span)
        d.update(
            trace_id=base64.b64encode(otel_id).decode(),
            span_id=span_ids[k],
            parent_span_id=None if k == 0 else span_ids[0],
            start_time_unix_nano=start_ns + k * 1_000,
            end_time_unix_nano=start_ns + 5_000_000 - k,
        )
        d["attributes"]["mlflow.traceRequestId"] = json.dumps(trace_id)
        inputs = json.loads(d["attributes"]["mlflow.spanInputs"])
        key = "question" if "question" in inputs else "query"
        text = (
            inputs[key].replace(EMAIL, f"user{i}@example.com").replace(PHONE, _phone(i, national))
        )
        d["attributes"]["mlflow.spanInputs"] = json.dumps({key: f"{text} #{i}"})
        spans.append(Span.from_dict(d))
    return trace_id, spans


def create_traces(
    count: int, experiment_id: str, start_ms: int, method: str, personal: str | None = None
) -> None:
    """``count`` traces over 7 days of request time, one judge feedback every 10th.

    ``ingest`` logs one real trace through the tracer, then stores copies of its spans in batches
    of 500 traces with ``TracingClient.log_spans`` (the OTLP ingestion path: the store derives
    each trace's info from its spans; trace metadata is left empty). ``tracer`` logs every trace
    through the fluent API."""
    judge = AssessmentSource(source_type="LLM_JUDGE", source_id="bench-judge")
    template_id = _log_with_tracer(0, start_ms * 1_000_000, bool(personal))
    template = [s.to_dict() for s in mlflow.get_trace(template_id).data.spans]
    client = TracingClient()
    began, pending, trace_ids = time.perf_counter(), [], [template_id]
    for i in range(1, count):
        start_ns = (start_ms + (i % 7) * DAY_MS + i) * 1_000_000
        if method == "tracer":
            trace_ids.append(_log_with_tracer(i, start_ns, bool(personal)))
        else:
            trace_id, spans = _clone_spans(template, i, start_ns, personal == "national")
            trace_ids.append(trace_id)
            pending.extend(spans)
        if len(pending) >= 1_000 or (pending and i + 1 == count):
            client.log_spans(experiment_id, pending)
            pending = []
        if (i + 1) % 1_000 == 0 or i + 1 == count:
            rate = (i + 1) / (time.perf_counter() - began)
            _progress(f"created {i + 1}/{count} traces ({rate:.0f}/s)")
    for trace_id in trace_ids[::10]:
        mlflow.log_feedback(trace_id=trace_id, name="relevance", value="yes", source=judge)
    _progress(f"logged {len(trace_ids[::10])} feedbacks")


def _holds_personal(export: Path) -> set[bool]:
    """For each file of the export, whether its text columns hold an e-mail address or a
    phone number of the traces."""
    columns = ["request", "request_preview", "spans", "trace_metadata"]
    return {
        any(raw in text for raw in ("@example.com", "415-555-", "555-2671"))
        for path in export.rglob("*.parquet")
        for text in [json.dumps(pq.read_table(path, columns=columns).to_pylist())]
    }


def page_through(
    client: MlflowClient, experiment_id: str, page_size: int, on_page: Callable[[int, list], None]
) -> tuple[int, float, float]:
    """Returns (traces seen, seconds in search_traces, seconds in on_page)."""
    token, seen, index, search_s, handle_s = None, 0, 0, 0.0, 0.0
    while True:
        t0 = time.perf_counter()
        page = client.search_traces(
            locations=[experiment_id],
            max_results=page_size,
            page_token=token,
            order_by=["timestamp_ms ASC"],
        )
        t1 = time.perf_counter()
        on_page(index, list(page))
        search_s += t1 - t0
        handle_s += time.perf_counter() - t1
        seen, index, token = seen + len(page), index + 1, page.token
        if not token:
            return seen, search_s, handle_s


def _median(runs: list[tuple[int, float, float, float]]) -> tuple[int, float, float, float]:
    """Each measure's median over the rounds (traces seen, search s, write s, CPU s)."""
    return runs[0][0], *(statistics.median(run[k] for run in runs) for k in (1, 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=1_000)
    parser.add_argument(
        "--create-with",
        choices=["ingest", "tracer"],
        default="ingest",
        help="ingest: batched span ingestion (fast, default); tracer: the fluent API (~30/s)",
    )
    parser.add_argument(
        "--pii",
        default="",
        help="Redaction policies to compare with none, e.g. 'standard,hash' (see the docstring)",
    )
    parser.add_argument(
        "--personal",
        nargs="?",
        const="international",
        choices=["international", "national"],
        help="Every trace carries an e-mail and a phone number, written +1 415-555-0123 "
        "(international, the default) or (415) 555-0123 (national)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Measure (b) and each policy this many times, alternated; medians are reported",
    )
    args = parser.parse_args()
    policies = [p for p in args.pii.split(",") if p]
    os.environ.setdefault(SECRET_ENV, secrets.token_hex(16))

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        root = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        experiment_id = mlflow.set_experiment("bench-export").experiment_id
        created_at = time.perf_counter()
        create_traces(
            args.traces, experiment_id, 1_767_225_600_000, args.create_with, args.personal
        )
        create_s = time.perf_counter() - created_at
        client = MlflowClient()

        _progress("(a) search_traces only ...")
        seen_a, search_a, _ = page_through(client, experiment_id, args.page_size, lambda i, p: None)

        def measure(label: str, policy: str | None) -> tuple[int, float, float, float]:
            load.cache_clear()  # recognizers with empty window caches: no run helps the next
            masker = masker_for(policy_from(POLICIES[policy])) if policy else None
            exporter = ParquetExporter(str(root / f"export-{label}"), masker=masker)

            def export(index: int, page: list[Trace]) -> None:
                exporter.write_batch(f"page-{index:05d}", page, EXPORTED_AT_MS)

            _progress(f"({label}) search_traces + trace_to_row + write_batch ...")
            cpu = time.process_time()
            seen, search_s, write_s = page_through(client, experiment_id, args.page_size, export)
            return seen, search_s, write_s, time.process_time() - cpu

        runs: dict[str, list[tuple[int, float, float, float]]] = {}
        for round_ in range(args.rounds):  # alternated: a drift in the machine's speed hits all
            if args.rounds > 1:
                _progress(f"round {round_ + 1}/{args.rounds}")
            for label, policy in [("b", None)] + [(f"pii-{p}", p) for p in policies]:
                runs.setdefault(label, []).append(measure(label, policy))
        seen_b, search_b, write_b, cpu_b = _median(runs["b"])
        files = [p for p in (root / "export-b").rglob("*.parquet")]
        search_rate = seen_a / search_a
        export_rate = seen_b / (search_b + write_b)
        summary = {
            "traces": args.traces,
            "page_size": args.page_size,
            "created_with": args.create_with,
            "rounds": args.rounds,
            "create_s": round(create_s, 2),
            "a_search_only_s": round(search_a, 3),
            "a_search_only_traces_per_s": round(search_rate, 1),
            "b_search_s": round(search_b, 3),
            "b_to_row_and_write_s": round(write_b, 3),
            "b_search_and_export_traces_per_s": round(export_rate, 1),
            "b_export_only_traces_per_s": round(seen_b / write_b, 1),
            "b_cpu_ms_per_trace": round(cpu_b / seen_b * 1000, 3),
            "ratio_b_over_a_throughput": round(export_rate / search_rate, 3),
            "parquet_files": len(files),
            "parquet_mb": round(sum(p.stat().st_size for p in files) / 1e6, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        for policy in policies:
            seen, search_s, write_s, cpu_s = _median(runs[f"pii-{policy}"])
            assert seen == args.traces, (policy, seen)
            if args.personal:  # the addresses and numbers are really masked
                holds = _holds_personal(root / f"export-pii-{policy}")
                assert holds == {False} and _holds_personal(root / "export-b") == {True}, holds
            rate = seen / (search_s + write_s)
            summary[f"pii_{policy}"] = {
                "search_and_export_traces_per_s": round(rate, 1),
                "export_only_traces_per_s": round(seen / write_s, 1),
                "cpu_ms_per_trace": round(cpu_s / seen * 1000, 3),
                "ratio_to_off_search_and_export": round(rate / export_rate, 3),
                "ratio_to_off_export_only": round(write_b / write_s, 3),
                "extra_cpu_ms_per_trace": round((cpu_s - cpu_b) / seen * 1000, 3),
            }
        summary["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
        assert seen_a == seen_b == args.traces, (seen_a, seen_b)
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
