"""Deliver alert messages: webhooks (JSON or Slack-compatible) and the operator's command.

A webhook's URL is read from the environment variable its target names, at the moment of
sending; it is never logged, stored or put in an error message (a Slack URL's path is its key).
Each call is bounded (``timeout_s`` per socket operation and ``budget_s`` for all attempts of
one message); 5xx, 408, 429, timeouts and refused connections are retried with exponential
backoff, honouring ``Retry-After``. A 2xx is a delivery whatever its body. The command target
comes only from the daemon's command line (``--alert-command``): it gets the JSON message on
stdin, runs without a shell, and succeeds by exiting 0.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.alerts.message import to_slack
from mlflow_monitor_plugin.config.alerts import AlertRule
from mlflow_monitor_plugin.redact import redact
from mlflow_monitor_plugin.scoring.proxy import retry_after_seconds

_logger = logging.getLogger(__name__)

COMMAND = "command"
MAX_BODY = 64 * 1024
USER_AGENT = "mlflow-monitor-alerts/1"


@dataclass(frozen=True)
class DeliverySettings:
    timeout_s: float = 10.0  # per connect / read
    attempts: int = 3  # per message and pass
    backoff_s: float = 1.0  # first wait; doubles
    budget_s: float = 30.0  # all attempts of one message in one pass
    max_backoff_s: float = 300.0  # between passes, for a message still refused
    command: str | None = None  # --alert-command: argv, split like a shell would, no shell


@dataclass(frozen=True)
class Delivery:
    ok: bool
    error: str | None = None
    retry_after_s: float | None = None
    unset: bool = False  # the target's URL variable is not set in this daemon
    retryable: bool = True  # worth another attempt in this pass


def webhook_key(index: int) -> str:
    return f"webhook:{index}"


def target_keys(rule: AlertRule, settings: DeliverySettings) -> list[str]:
    keys = [webhook_key(i) for i in range(len(rule.targets))]
    return keys + ([COMMAND] if settings.command else [])


class Notifier:
    """Sends one message to one target of a rule, with bounded retries."""

    def __init__(
        self,
        settings: DeliverySettings | None = None,
        environ: Mapping[str, str] = os.environ,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings or DeliverySettings()
        self._environ = environ
        self._sleep = sleep
        self._clock = clock

    def describe(self, rule: AlertRule, key: str) -> str:
        """The target as logs show it: never its URL."""
        if key == COMMAND:
            return "the --alert-command"
        index = int(key.partition(":")[2])
        if index >= len(rule.targets):
            return f"target {key} (no longer in the rule)"
        target = rule.targets[index]
        return f"{target.format} webhook ${target.url_env}"

    def unset_targets(self, rule: AlertRule) -> list[tuple[str, str]]:
        """The (target key, variable name) of webhooks whose URL variable is not set here."""
        return [
            (webhook_key(i), t.url_env)
            for i, t in enumerate(rule.targets)
            if not self._environ.get(t.url_env, "").strip()
        ]

    def send(self, rule: AlertRule, key: str, payload: dict[str, Any]) -> Delivery:
        if key == COMMAND:
            if not self.settings.command:
                return Delivery(True, error="no --alert-command in this daemon: skipped")
            return self._run_command(payload)
        index = int(key.partition(":")[2])
        if index >= len(rule.targets):
            return Delivery(True, error="target no longer in the rule: skipped")
        target = rule.targets[index]
        url = self._environ.get(target.url_env, "").strip()
        if not url:
            return Delivery(False, error=f"${target.url_env} is not set", unset=True)
        body = to_slack(payload) if target.format == "slack" else payload
        return self._post(url, json.dumps(body).encode())

    def _post(self, url: str, body: bytes) -> Delivery:
        s = self.settings
        deadline = self._clock() + s.budget_s
        result = Delivery(False, error="not tried")
        for attempt in range(max(1, s.attempts)):
            result = self._post_once(url, body, deadline)
            if result.ok or not result.retryable:
                return result
            wait = result.retry_after_s
            if wait is None:
                wait = s.backoff_s * 2**attempt
            if attempt + 1 >= s.attempts or self._clock() + wait > deadline:
                return Delivery(False, result.error, wait)
            self._sleep(wait)
        return result

    def _post_once(self, url: str, body: bytes, deadline: float) -> Delivery:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        timeout = max(0.1, min(self.settings.timeout_s, deadline - self._clock()))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                self._drain(response, deadline)
                return Delivery(True)
        except urllib.error.HTTPError as e:
            retry_after = retry_after_seconds(e.headers.get("Retry-After"), time.time())
            retryable = e.code >= 500 or e.code in (408, 425, 429)
            error = f"HTTP {e.code}" + ("" if retryable else " (check the receiver's config)")
            return Delivery(False, error, retry_after, retryable=retryable)
        except (TimeoutError, OSError) as e:  # URLError, refused, reset, DNS, TLS
            reason = getattr(e, "reason", e)
            return Delivery(False, f"{type(reason).__name__}: {self._clean(str(reason), url)}")
        except ValueError:
            return Delivery(False, "the URL is not a valid http(s) URL", retryable=False)

    def _drain(self, response: Any, deadline: float) -> None:
        """Read (and drop) a bounded body; a receiver dripping it is cut off at the deadline."""
        read = 0
        while read < MAX_BODY and self._clock() < deadline:
            try:
                chunk = response.read1(4096) if hasattr(response, "read1") else response.read(4096)
            except (TimeoutError, OSError):
                return
            if not chunk:
                return
            read += len(chunk)

    @staticmethod
    def _clean(text: str, url: str) -> str:
        return redact(text.replace(url, "<webhook URL>"))

    def _run_command(self, payload: dict[str, Any]) -> Delivery:
        argv = shlex.split(self.settings.command or "")
        env = {
            **os.environ,
            "MLFLOW_MONITOR_ALERT_EVENT": payload["event"],
            "MLFLOW_MONITOR_ALERT_EVENT_ID": payload["event_id"],
            "MLFLOW_MONITOR_ALERT_INCIDENT_ID": payload["incident_id"],
        }
        try:
            done = subprocess.run(  # argv: the operator's own --alert-command
                argv,
                input=json.dumps(payload).encode(),
                env=env,
                capture_output=True,
                timeout=self.settings.budget_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Delivery(False, f"the command ran past {self.settings.budget_s:g}s")
        except OSError as e:
            return Delivery(False, f"the command could not start: {e.strerror}")
        if done.returncode != 0:
            tail = redact(done.stderr.decode(errors="replace").strip()[-300:])
            return Delivery(False, f"the command exited {done.returncode}: {tail}")
        return Delivery(True)
