"""Mounts ``mlflow monitor`` into MLflow's CLI. Loaded at interpreter start by mlflow_monitor.pth.

MLflow has no entry point for CLI commands. This module watches for the import of ``mlflow.cli``
(a one-shot finder at the front of ``sys.meta_path``, consulted only until that import) and, once
MLflow has built its click group, adds our ``monitor`` group to it. It imports nothing heavy at
interpreter start, and every step is guarded: whatever goes wrong here, the ``mlflow`` command
works as if the plugin were not installed. Set MLFLOW_MONITOR_DISABLE_CLI_HOOK=1 to turn it off.
"""

import os
import sys

_TARGET = "mlflow.cli"


def _mount(module):
    try:
        from mlflow_monitor_plugin.cli import monitor

        module.cli.add_command(monitor, "monitor")
    except Exception as e:  # never break the mlflow command
        if os.environ.get("MLFLOW_MONITOR_DEBUG_CLI_HOOK"):
            sys.stderr.write(f"mlflow-monitor: could not mount `mlflow monitor`: {e!r}\n")


class _MlflowCliFinder:
    """Lets the normal finders locate ``mlflow.cli``, then runs ``_mount`` after it executes."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            return None
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
            loader = getattr(spec, "loader", None)
            exec_module = getattr(loader, "exec_module", None)
            if exec_module is None:
                return spec

            def exec_and_mount(module):
                exec_module(module)
                _mount(module)

            loader.exec_module = exec_and_mount
            return spec
        except Exception:
            return None  # the import proceeds through the normal finders


def install():
    try:
        if os.environ.get("MLFLOW_MONITOR_DISABLE_CLI_HOOK"):
            return
        if _TARGET in sys.modules:
            _mount(sys.modules[_TARGET])
        elif not any(isinstance(f, _MlflowCliFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _MlflowCliFinder())
    except Exception:
        pass
