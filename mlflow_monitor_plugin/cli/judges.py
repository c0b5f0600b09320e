"""``mlflow monitor judges``: every judge a monitor can run, what it needs and its options."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any

import click

from mlflow_monitor_plugin.cli.options import handle_errors, output_option
from mlflow_monitor_plugin.config.catalog import CATALOG, NEEDS, REFUSED
from mlflow_monitor_plugin.config.custom import ENTRY_POINT_GROUP


def judge_rows() -> list[dict[str, Any]]:
    """One row per judge name: the catalog's built-ins, guidelines, custom and installed code
    judges."""
    rows = [
        {
            "name": info.name,
            "kind": "builtin",
            "llm": info.llm,
            "level": "session" if info.session else "trace",
            "needs": list(info.needs),
            "options": {
                o.name: f"{o.expected[9:]}{' (required)' if o.required else ''}: {o.description}"
                for o in info.options
            },
            "description": info.description,
        }
        for info in CATALOG.values()
    ]
    rows.append(
        {"name": "<your key>", "kind": "guidelines", "llm": True, "level": "trace",
         "needs": ["inputs", "outputs"], "options": {"guidelines": "{key: [rule, ...]}"},
         "description": "GuidelinesJudge: each key judged by MLflow's Guidelines scorer"}
    )  # fmt: skip
    rows.append(
        {"name": "<your name>", "kind": "custom", "llm": True, "level": "trace or session",
         "needs": [], "options": {
             "instructions": "a prompt with {{ inputs }}, {{ outputs }}, {{ trace }} or "
             "{{ conversation }} (a session judge)",
             "feedback_value_type": "str, bool, int, float or a list of choices"},
         "description": "CustomJudge: your prompt, built with MLflow's make_judge"}
    )  # fmt: skip
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        rows.append(
            {"name": ep.name, "kind": "code", "llm": None, "level": "trace", "needs": [],
             "options": {}, "description": f"CodeJudge: installed scorer {ep.value}"}
        )  # fmt: skip
    return rows


def registered_rows(experiment_id: str) -> list[dict[str, Any]]:
    """The judges registered in MLflow on an experiment (its Judges page), as the daemon
    reads them: kind, model, scope, sampling, and why one cannot run here."""
    from mlflow_monitor_plugin.config import registered
    from mlflow_monitor_plugin.scoring.judges import build_registered

    found = registered.read(experiment_id)
    built = {j.name: j for j in build_registered(found)}
    return [
        {"name": r.name, "kind": f"mlflow ({r.kind})", "llm": r.llm,
         "level": "session" if r.session else "trace",
         "needs": sorted(built[r.name].needs - {"session"}) if r.name in built else [],
         "options": {}, "description": r.describe()
         + (f"; unavailable: {built[r.name].unavailable}"
            if r.name in built and built[r.name].unavailable else "")}
        for r in found
    ]  # fmt: skip


@click.command("judges")
@click.option(
    "-x",
    "--experiment-id",
    help="Also list the judges registered in MLflow on this experiment (its Judges page), "
    "which a monitor there runs when they are started.",
)
@output_option
@handle_errors
def judges_command(experiment_id: str | None, output: str) -> None:
    """List the judges a monitor can run: built-ins, guidelines, custom prompts, the code
    judges installed here (entry points of group mlflow_monitor.scorers), and with -x the
    judges registered in MLflow on the experiment (kind "mlflow").

    \b
    Example:
      mlflow monitor judges
      mlflow monitor judges -x 1 --output json
    """
    rows = judge_rows() + (registered_rows(experiment_id) if experiment_id else [])
    refused = [{"name": name, "reason": reason} for name, reason in REFUSED.items()]
    if output == "json":
        click.echo(json.dumps({"judges": rows, "not_available": refused}, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("name", "kind", "llm", "needs", "options", "what it judges")
    for row in rows:
        llm = {True: "yes", False: "no", None: "?"}[row["llm"]]
        needs = ", ".join(NEEDS[n].split(" (")[0] for n in row["needs"]) or "-"
        options = "\n".join(f"{k}: {v}" for k, v in row["options"].items()) or "-"
        cells = (row["name"], row["kind"], llm, needs, options, row["description"])
        table.add_row(*(escape(c) for c in cells))
    console = Console(width=200)
    console.print(table)
    for row in refused:
        console.print(escape(f"not available: {row['name']}: {row['reason']}"))


COMMANDS = [judges_command]
