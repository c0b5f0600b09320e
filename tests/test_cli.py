import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin.cli import monitor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args, ok=True):
    result = CliRunner().invoke(monitor, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result


def test_create_get_update_list_delete_round_trip(experiment_id):
    out = run("create", "-x", experiment_id, "--judge", "safety", "--judge", "groundedness:0.4",
              "--guideline", "polite=Be polite.", "--guideline", "polite=No slang.",
              "--sample", "0.5", "--output", "json").output  # fmt: skip
    created = json.loads(out)
    assert created["assessments_config"]["sample"] == 0.5
    assert created["assessments_config"]["assessments"] == [
        {"name": "safety"},
        {"name": "groundedness", "sample_rate": 0.4},
        {"guidelines": {"polite": ["Be polite.", "No slang."]}},
    ]
    assert json.loads(run("get", "-x", experiment_id, "--output", "json").output) == created
    assert "groundedness @ 0.4" in run("get", "-x", experiment_id).output

    run("update", "-x", experiment_id, "--judge", "pii_detection")
    got = json.loads(run("get", "-x", experiment_id, "--output", "json").output)
    assert got["assessments_config"]["assessments"] == [{"name": "pii_detection"}]
    assert got["config_version"] == 2

    listed = json.loads(run("list", "--output", "json").output)
    assert experiment_id in [m["experiment_id"] for m in listed]
    assert "pii_detection" in run("list").output

    assert "Deleted" in run("delete", "-x", experiment_id, "--yes").output
    assert "has no monitor" in run("get", "-x", experiment_id, ok=False).output


def test_create_from_yaml_file(sqlite_experiment_id):
    out = run("create", "-x", sqlite_experiment_id, "-f", str(EXAMPLES / "monitor.yaml"),
              "--output", "json").output  # fmt: skip
    created = json.loads(out)
    names = [a.get("name") for a in created["assessments_config"]["assessments"]]
    assert names[:4] == ["safety", "groundedness", "relevance_to_query", "chunk_relevance"]


def test_create_from_json_file_uses_env_experiment(sqlite_experiment_id, tmp_path, monkeypatch):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"sample": 0.2, "assessments": [{"name": "safety"}]}))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", sqlite_experiment_id)
    run("create", "-f", str(path))
    out = json.loads(run("get", "--output", "json").output)
    assert out["experiment_id"] == sqlite_experiment_id
    assert out["assessments_config"]["sample"] == 0.2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--judge", "toxicity"], "Invalid BuiltinJudge.name: got 'toxicity'"),
        (["--judge", "safety:lots"], "the rate after ':' must be a number"),
        (["--judge", "safety", "--sample", "2"], "got 2.0; expected a number between 0.0 and 1.0"),
        (["--guideline", "nameonly"], "expected NAME=TEXT"),
        ([], "Give at least one judge"),
    ],
)
def test_create_bad_input_prints_clear_error(sqlite_experiment_id, args, message):
    result = run("create", "-x", sqlite_experiment_id, *args, ok=False)
    assert message in result.output
    assert "Traceback" not in result.output
    assert "has no monitor" in run("get", "-x", sqlite_experiment_id, ok=False).output


BAD_CONFIGS = {
    "unknown judge": ({"assessments": [{"name": "no_such_judge"}]}, "got 'no_such_judge'"),
    "filter MLflow rejects": (
        {"assessments": [{"name": "safety", "filter_string": "tags.env === 'prod' AND"}]},
        "MLflow says: Invalid comparator '==='",
    ),
    "prompt without a variable": (
        {"assessments": [{"kind": "custom", "name": "polite", "instructions": "Is it polite?"}]},
        "its template variables (none) must be among {{ inputs }}",
    ),
}


@pytest.mark.parametrize("command", ["create", "update", "plan"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_every_refused_config_exits_2_naming_what_is_allowed(
    sqlite_experiment_id, tmp_path, command, case
):
    """Issue 26: click's convention, exit 2 for refused input, on create, update and plan."""
    if command != "create":
        run("create", "-x", sqlite_experiment_id, "--judge", "safety")
    config, message = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(monitor, [command, "-x", sqlite_experiment_id, "-f", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    if command == "create":
        assert "has no monitor" in run("get", "-x", sqlite_experiment_id, ok=False).output
    else:  # the stored config is untouched
        judges = json.loads(run("get", "-x", sqlite_experiment_id, "--output", "json").output)
        assert judges["assessments_config"]["assessments"] == [{"name": "safety"}]


def test_every_command_has_help_text():
    def walk(command, path):
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    for path, command in walk(monitor, ["monitor"]):
        assert command.help and len(command.help) > 20, f"{' '.join(path)} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{' '.join(path)} {param.opts} has no help"


def _installed_env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("MLFLOW_MONITOR_DISABLE_CLI_HOOK", None)
    return env


def test_mlflow_cli_lists_monitor_after_install(tmp_path):
    """The installed package (not this checkout) mounts `mlflow monitor` into MLflow's CLI."""
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    top = subprocess.run([mlflow_bin, "--help"], capture_output=True, text=True, cwd=tmp_path,
                         env=_installed_env(), check=True)  # fmt: skip
    assert "monitor" in top.stdout
    sub = subprocess.run([mlflow_bin, "monitor", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=_installed_env(), check=True)  # fmt: skip
    for command in monitor.commands:
        assert f"  {command} " in sub.stdout, f"`mlflow monitor --help` lacks {command}"
    standalone = Path(sys.executable).with_name("mlflow-monitor")
    alone = subprocess.run([str(standalone), "--help"], capture_output=True, text=True,
                           cwd=tmp_path, env=_installed_env(), check=True)  # fmt: skip
    assert all(f"  {command} " in alone.stdout for command in monitor.commands)


def test_broken_plugin_never_breaks_mlflow_cli(tmp_path):
    code = (
        "import sys; sys.modules['mlflow_monitor_plugin.cli'] = None\n"
        "from mlflow.cli import cli\n"
        "assert 'monitor' not in cli.commands, 'mounted despite the broken import'\n"
        "assert 'experiments' in cli.commands\n"
        "print('mlflow cli ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=_installed_env())  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mlflow cli ok" in result.stdout


def test_cli_hook_can_be_disabled(tmp_path):
    env = {**_installed_env(), "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1"}
    code = "from mlflow.cli import cli; print(sorted(cli.commands))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=env, check=True)  # fmt: skip
    assert "'monitor'" not in result.stdout and "'experiments'" in result.stdout
