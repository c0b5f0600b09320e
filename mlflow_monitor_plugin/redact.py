"""Keep secrets out of what the plugin writes: tags, feedback, exports and logs.

The secrets are the values of the process's credential variables (``OPENAI_API_KEY``,
``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``), and the passwords and query values of
URLs in ``*_BASE``, ``*_URL``, ``*_URI`` variables (a key passed as ``?api-key=``). They are
derived from the environment as it is at each call (kept only while the environment is
unchanged: a verdict's rationale is checked on every write), never stored anywhere else.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import parse_qsl, urlsplit

from mlflow_monitor_plugin.exceptions import MonitorConfigError

_SECRET_NAME = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD|AUTH|HEADERS)$|^OPENAI_API_KEY$", re.I)
_MIN_SECRET_LENGTH = 8
MASK = "***"


_URL_NAME = re.compile(r"(_BASE|_URL|_URI|_ENDPOINT)$", re.I)
_secret_urls: set[str] = set()


def add_secret_url(url: str) -> None:
    """Also mask the credentials embedded in ``url`` (e.g. the judge upstream behind the proxy)."""
    _secret_urls.add(url)


def secret_urls() -> set[str]:
    """The URLs given to ``add_secret_url`` (a scoring process needs them too)."""
    return set(_secret_urls)


def _url_credentials(url: str) -> set[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    found = {parts.password or ""} | {v for _, v in parse_qsl(parts.query)}
    return {v for v in found if len(v) >= _MIN_SECRET_LENGTH}


_cached: tuple[dict[bytes, bytes], int, list[str]] | None = None


def secret_values() -> list[str]:
    """The credential values in the environment, longest first (a prefix never masks alone)."""
    global _cached
    raw = getattr(os.environ, "_data", None)  # CPython's bytes mapping: a cheap C-level compare
    cached = _cached
    if (
        cached is not None
        and raw is not None
        and cached[1] == len(_secret_urls)
        and cached[0] == raw
    ):
        return cached[2]
    found = _secret_values()
    if isinstance(raw, dict):
        _cached = (dict(raw), len(_secret_urls), found)
    return found


def _secret_values() -> list[str]:
    values = {
        value
        for name, value in os.environ.items()
        if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LENGTH
    }
    urls = {v for k, v in os.environ.items() if _URL_NAME.search(k)} | _secret_urls
    for url in urls:
        values |= _url_credentials(url)
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text


def assert_no_secret(text: str, what: str) -> None:
    """Refuse to write ``text`` when it contains a credential from the environment."""
    for value in secret_values():
        if value in text:
            raise MonitorConfigError(
                what,
                "<text containing the value of a credential environment variable>",
                "secrets never go into MLflow tags; the daemon reads keys from its environment",
            )


class RedactingFilter(logging.Filter):
    """A logging filter that masks credential values in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if not secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for value in secrets:
            cleaned = cleaned.replace(value, MASK)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str) -> None:
    """Log lines to stderr, with credential values masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mlflow_monitor_plugin").setLevel(level.upper())
