"""Shadow judges as the engine runs them: one ``JudgeSpec`` per candidate, beside its judge.

A shadow's spec is built from its candidate's config like any judge (config/scorers.py), then
named ``shadow/<judge>`` and given its judge's rate and filter, so it is due on exactly the
traces its judge sampled (the engine samples it with its judge, budget included); ``shadow_of``
names the judge. Its scorer is built under the judge's name, as the promoted judge will be, and
its feedback is logged under the shadow's name (``fingerprint.feedback_name``). The windows,
alerts and curation read judges by name and never see it. See config/shadows.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig
from mlflow_monitor_plugin.config.shadows import shadow_name
from mlflow_monitor_plugin.scoring.judges import JudgeSpec, build_judges


def shadow_specs(monitor: Any, judges: Iterable[JudgeSpec]) -> list[JudgeSpec]:
    """The shadows of ``judges`` (the monitor's trace judges, as built) in config order; a
    shadow whose judge is not among them (removed, a session judge) is left out."""
    suite = monitor.assessments_config
    by_name = {j.name: j for j in judges if not j.session and j.origin == "monitor"}
    specs = []
    for name, candidate in (suite.shadows or {}).items():
        judge = by_name.get(name)
        if judge is None:
            continue
        alone = AssessmentsSuiteConfig(suite.sample, False, [candidate], suite.model)
        built = [s for s in build_judges(alone) if s.name == name]
        if not built or built[0].session:
            continue
        specs.append(
            replace(
                built[0],
                name=shadow_name(name),
                rate=judge.rate,
                filter_string=judge.filter_string,
                strata=judge.strata,  # the same sampled traces, stratum by stratum
                shadow_of=name,
            )
        )
    return specs


def with_shadows(monitor: Any, judges: list[JudgeSpec]) -> list[JudgeSpec]:
    """``judges`` followed by their shadows."""
    return judges + shadow_specs(monitor, judges)
