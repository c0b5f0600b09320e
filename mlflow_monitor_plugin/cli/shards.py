"""``run``'s shard options: ``--shard K/N``, or ``--shard-from-hostname`` with ``--shards N``."""

from __future__ import annotations

import os
import socket
from typing import Any

import click

from mlflow_monitor_plugin.discovery.shards import Shard, parse_shard, shard_from_hostname
from mlflow_monitor_plugin.exceptions import MonitorConfigError


def shard_options(func: Any) -> Any:
    options = [
        click.option(
            "--shard",
            envvar="MLFLOW_MONITOR_SHARD",
            help="Work only shard K of N of each monitor's traces, e.g. 0/4 (K from 0): run N "
            "replicas, 0/N to N-1/N. Each shard has its own cursor and lease. Default: one "
            "daemon works every trace (a second one stands by). See docs/scaling.md.",
        ),
        click.option(
            "--shard-from-hostname",
            is_flag=True,
            envvar="MLFLOW_MONITOR_SHARD_FROM_HOSTNAME",
            help="Take K from the host name's ordinal, as a Kubernetes StatefulSet names its "
            "pods (mlflow-monitor-3 -> shard 3); N from --shards.",
        ),
        click.option(
            "--shards",
            type=click.IntRange(min=1),
            envvar="MLFLOW_MONITOR_SHARDS",
            help="N, the number of shards, with --shard-from-hostname (the StatefulSet's "
            "replicas).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def shard_from_options(options: dict[str, Any]) -> Shard | None:
    """Take the shard options out of ``options``; the shard, or None to work every trace."""
    text, from_host, count = (
        options.pop("shard"),
        options.pop("shard_from_hostname"),
        options.pop("shards"),
    )
    try:
        if from_host:
            if text:
                raise click.BadParameter("give --shard or --shard-from-hostname, not both")
            if count is None:
                raise click.BadParameter(
                    "--shard-from-hostname needs the number of shards: --shards N "
                    "(or $MLFLOW_MONITOR_SHARDS)",
                    param_hint="--shards",
                )
            hostname = os.environ.get("HOSTNAME") or socket.gethostname()
            return shard_from_hostname(hostname, count)
        if not text:
            if count is not None:
                raise click.BadParameter("goes with --shard-from-hostname", param_hint="--shards")
            return None
        shard = parse_shard(text)
        if count is not None and count != shard.count:
            raise click.BadParameter(f"--shard {text} is of {shard.count} shards, --shards {count}")
        return shard
    except MonitorConfigError as e:
        raise click.BadParameter(str(e)) from None
