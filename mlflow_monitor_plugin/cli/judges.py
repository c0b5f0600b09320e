"""``mlflow monitor judges``: every judge a monitor can run, what it needs and its options."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any

import click

from mlflow_monitor_plugin.cli.options import output_option
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


@click.command("judges")
@output_option
def judges_command(output: str) -> None:
    """List the judges a monitor can run: built-ins, guidelines, custom prompts and the code
    judges installed here (entry points of group mlflow_monitor.scorers).

    \b
    Example:
      mlflow monitor judges
      mlflow monitor judges --output json
    """
    rows = judge_rows()
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
