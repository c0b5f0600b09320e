"""``mlflow monitor compare | promote | label``, and ``update --shadow``: trust the judges.

Shadow judges run a candidate beside a judge on the same sampled traces; ``compare`` measures
how the two agree, ``promote`` makes the candidate the judge. ``label`` gives a person's label
for a judge on a trace (what the MLflow UI's "Add feedback" does), checked against what the
judge can say. See docs/judges-trust.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from mlflow_monitor_plugin.cli.options import experiment_options, handle_errors, output_option
from mlflow_monitor_plugin.exceptions import MonitorConfigError

SHADOW_HELP = (
    "A candidate beside a judge, on the same sampled traces: NAME=SPEC, SPEC a YAML/JSON "
    'mapping of what differs ("{model: \'openai:/gpt-4.1-nano\'}", "{guidelines: [...]}", '
    "\"{instructions: '...'}\") or a whole judge; NAME=off removes it. Repeatable. Without "
    "other judge flags the monitor's judges stay as they are."
)
_WHOLE = ("kind", "name", "instructions")  # a SPEC naming one of these is a whole judge


def shadow_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--shadow", "shadow_specs", multiple=True, metavar="NAME=SPEC",
                        help=SHADOW_HELP)(func)  # fmt: skip


def _base(suite: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The judge ``name`` of a suite's dict form, as a judge logging only ``name``."""
    for judge in suite.get("assessments") or []:
        guidelines = judge.get("guidelines")
        if isinstance(guidelines, Mapping) and name in guidelines:
            model = {"model": judge["model"]} if judge.get("model") else {}
            return {"guidelines": {name: list(guidelines[name])}, **model}
        if judge.get("name") == name:
            return {k: v for k, v in judge.items() if k not in ("sample_rate", "filter_string")}
    raise MonitorConfigError("--shadow", name, f"expected a judge of this monitor: {_names(suite)}")


def _names(suite: Mapping[str, Any]) -> list[str]:
    names = []
    for judge in suite.get("assessments") or []:
        guidelines = judge.get("guidelines")
        names += list(guidelines) if isinstance(guidelines, Mapping) else [judge.get("name")]
    return names


def apply_shadows(suite: dict[str, Any], specs: tuple[str, ...]) -> dict[str, Any]:
    """The suite (dict form) with the ``--shadow NAME=SPEC`` flags applied."""
    import yaml

    shadows = dict(suite.get("shadows") or {})
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise MonitorConfigError("--shadow", spec, "expected NAME=SPEC or NAME=off")
        if text.strip() == "off":
            if name not in shadows:
                raise MonitorConfigError(
                    "--shadow", spec, f"expected a judge with a shadow: {sorted(shadows)}"
                )
            shadows.pop(name)
            continue
        try:
            given = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MonitorConfigError(
                "--shadow", spec, f"expected a YAML/JSON mapping ({e})"
            ) from None
        if not isinstance(given, Mapping):
            raise MonitorConfigError("--shadow", spec, "expected a YAML/JSON mapping after '='")
        base = _base(suite, name)
        if any(key in given for key in _WHOLE):
            candidate = {"name": name, **given}
        else:
            candidate = {**base, **given}
            if isinstance(given.get("guidelines"), list):
                candidate["guidelines"] = {name: given["guidelines"]}
        if "guidelines" in candidate and isinstance(candidate["guidelines"], Mapping):
            candidate.pop("name", None)
        shadows[name] = candidate
    out = dict(suite)
    out["shadows"] = shadows or None
    return out


@click.command("compare")
@experiment_options
@click.option("--judge", required=True, metavar="NAME", help="The judge with a shadow.")
@click.option("--since", default="7d", show_default=True, metavar="WHEN",
              help="Start: a date, a UTC date and time, or an age (7d, 12h).")  # fmt: skip
@click.option("--until", metavar="WHEN", help="End, excluded. Default: now.")
@output_option
@handle_errors
def compare_command(
    experiment_id: str | None,
    experiment_name: str | None,
    judge: str,
    since: str,
    until: str | None,
    output: str,
) -> None:
    """Compare a judge with its shadow on the traces both judged.

    Prints the verdict pairs, the confusion matrix (rows: the judge; columns: the shadow),
    the agreement rate and Cohen's kappa with 95% intervals, both pass rates and their
    difference (the judge's minus the shadow's) with its 95% interval, the disagreeing
    trace ids, and what each side cost.

    \b
    Examples:
      mlflow monitor compare -x 1 --judge safety
      mlflow monitor compare -x 1 --judge safety --since 30d --output json
    """
    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.discovery.timerange import TimeRange
    from mlflow_monitor_plugin.engine.shadow import compare

    window = TimeRange.parse(since, until, int(time.time() * 1000))
    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    result = compare(monitor.experiment_id, judge, window).to_dict()
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    _print_comparison(result)


def _num(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"


def _ci(result: dict[str, Any], key: str, pct: bool = True) -> str:
    low, high = result[f"{key}_low95"], result[f"{key}_high95"]
    if result[key] is None:
        return "-"
    return f"{_num(result[key], pct)} (95% {_num(low, pct)} to {_num(high, pct)})"


def _print_comparison(r: dict[str, Any]) -> None:
    click.echo(f"{r['judge']} vs {r['shadow']}: {r['pairs']} traces judged by both, of "
               f"{r['traces']} in the range ({r['judge_only']} by the judge only, "
               f"{r['shadow_only']} by the shadow only)")  # fmt: skip
    matrix = r["confusion"]
    if matrix:
        labels = list(matrix)
        width = max(8, *(len(x) for x in labels)) + 2
        click.echo("judge \\ shadow".ljust(width + 6) + "".join(x.rjust(width) for x in labels))
        for row in labels:
            cells = "".join(str(matrix[row][col]).rjust(width) for col in labels)
            click.echo(f"  {row}".ljust(width + 6) + cells)
    click.echo(f"agreement:  {_ci(r, 'agreement')}  ({r['agreed']} of {r['pairs']})")
    click.echo(f"kappa:      {_ci(r, 'kappa', pct=False)}")
    if r["yes_no_pairs"]:
        click.echo(f"pass rate:  judge {_num(r['judge_pass_rate'])}, shadow "
                   f"{_num(r['shadow_pass_rate'])}; difference "
                   f"{_ci(r, 'pass_rate_difference')}")  # fmt: skip
    for side, key in (("judge", "judge_cost"), ("shadow", "shadow_cost")):
        cost = r[key]
        usd = "unknown" if cost["cost_usd"] is None else f"${cost['cost_usd']:.4f}"
        click.echo(f"{side} cost:  {cost['verdicts']} verdicts, {cost['errors']} errors, "
                   f"{cost['tokens']} tokens, {usd}")  # fmt: skip
    ids = r["disagreeing_trace_ids"]
    if ids:
        more = " ..." if len(ids) > 20 else ""
        click.echo(f"disagreeing traces ({len(ids)}): {', '.join(ids[:20])}{more}"
                   "  (all of them: --output json)")  # fmt: skip


@click.command("promote")
@experiment_options
@click.option("--judge", required=True, metavar="NAME", help="The judge whose shadow takes over.")
@output_option
@handle_errors
def promote_command(
    experiment_id: str | None, experiment_name: str | None, judge: str, output: str
) -> None:
    """Make a judge's shadow the judge, in one config update.

    From the daemon's next pass the candidate scores, under the judge's name, every sampled
    trace the judge has not scored; no trace the judge scored is scored again, and the judge's
    windows go on (the report marks the change of fingerprint). The judge's sample rate and
    filter carry over unless the candidate sets its own. The shadow's past verdicts stay.

    \b
    Example:
      mlflow monitor promote -x 1 --judge safety
    """
    from mlflow_monitor_plugin.config import api

    updated = api.promote_shadow(
        judge=judge, experiment_id=experiment_id, experiment_name=experiment_name
    )
    if output == "json":
        click.echo(json.dumps(updated.to_dict(), indent=2))
        return
    click.echo(f"Promoted the shadow of {judge}: it is the judge from config version "
               f"{updated.config_version} on.")  # fmt: skip


@click.command("label")
@experiment_options
@click.option("--trace-id", required=True, help="The trace labelled.")
@click.option("--judge", required=True, metavar="NAME", help="The judge the label is for.")
@click.option("--value", required=True, help="The label: a value the judge gives (yes, no...).")
@click.option("--rationale", help="Why.")
@click.option("--user", default="mlflow-monitor-cli", show_default=True,
              help="Who labels (the feedback's HUMAN source id).")  # fmt: skip
@handle_errors
def label_command(
    experiment_id: str | None,
    experiment_name: str | None,
    trace_id: str,
    judge: str,
    value: str,
    rationale: str | None,
    user: str,
) -> None:
    """Give a person's label for a judge on a trace (as the UI's "Add feedback" does).

    The label is compared with the judge's verdict in the windows, report, /metrics and
    `curate --disagreement`; a second label by the same user replaces the first. A value the
    judge never gives (a number for a yes/no judge) is refused.

    \b
    Example:
      mlflow monitor label -x 1 --trace-id tr-123 --judge safety --value no --user ana
    """
    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.engine.labels import label_trace

    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    logged = label_trace(monitor.experiment_id, trace_id, judge, _typed(value), rationale, user)
    click.echo(f"Labelled {trace_id} for {judge}: {logged.value!r} ({logged.assessment_id}).")


def _typed(text: str) -> Any:
    """A label as the UI sends it: a number or true/false as such, else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


COMMANDS = [compare_command, promote_command, label_command]
