"""The export stage: every trace copied to a Parquet (or Delta) dataset.

``rows`` turns a trace into a row (pure), ``masking`` masks its personal data (pure);
``parquet`` and ``delta`` write rows; ``resync`` rewrites recent partitions from the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow_monitor_plugin.exceptions import MonitorConfigError

if TYPE_CHECKING:
    from mlflow_monitor_plugin.export.base import Exporter
    from mlflow_monitor_plugin.redaction import Masker


def make_exporter(
    export_uri: str, format: str = "parquet", masker: Masker | None = None
) -> Exporter:
    """The exporter for ``format`` (``parquet`` or ``delta``) writing to ``export_uri``, masking
    what ``masker``'s policy names."""
    if format == "parquet":
        from mlflow_monitor_plugin.export.parquet import ParquetExporter

        return ParquetExporter(export_uri, masker=masker)
    if format == "delta":
        from mlflow_monitor_plugin.export.delta import DeltaExporter

        return DeltaExporter(export_uri, masker=masker)
    raise MonitorConfigError("export format", format, "allowed: 'parquet' or 'delta'")
