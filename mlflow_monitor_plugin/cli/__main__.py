"""``python -m mlflow_monitor_plugin.cli``: the command group, as the ``mlflow-monitor`` script."""

from mlflow_monitor_plugin.cli.main import main

main()
