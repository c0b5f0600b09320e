"""The built-in judges a monitor can run, by name: MLflow scorer, LLM or not, trace shape, options.

Pure data and the checks of a judge's options. The names follow the Databricks judges where
Databricks has one (``groundedness``, ``chunk_relevance``), MLflow's scorer names otherwise.
Scorers that compare against expectations (ground truth) are refused: production traces carry
none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorConfigError

#: What a trace (or session) must carry for a judge to apply.
NEEDS = {
    "inputs": "a request",
    "outputs": "a response",
    "retrieval": "a RETRIEVER span",
    "tools": "a TOOL span",
    "session": "a session (traces sharing mlflow.trace.session metadata)",
}


@dataclass(frozen=True)
class Option:
    """One argument of a scorer, with the type a config value must have."""

    name: str
    type: str  # 'bool', 'int', 'regex', 'choice', 'choices', 'texts'
    description: str
    required: bool = False
    choices: tuple[str, ...] = ()

    @property
    def expected(self) -> str:
        if self.type == "bool":
            return "expected true or false"
        if self.type == "int":
            return "expected an integer >= 0"
        if self.type == "regex":
            return "expected a regular expression (a string)"
        if self.type == "choice":
            return f"expected one of {list(self.choices)}"
        if self.type == "choices":
            return f"expected a non-empty list of {list(self.choices)}"
        return "expected a non-empty string or a non-empty list of non-empty strings"

    def check(self, field_name: str, value: Any) -> Any:
        ok = {
            "bool": lambda v: isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "regex": lambda v: isinstance(v, str) and bool(v),
            "choice": lambda v: v in self.choices,
            "choices": lambda v: isinstance(v, list) and v and all(c in self.choices for c in v),
            "texts": _is_texts,
        }[self.type](value)
        if not ok:
            raise MonitorConfigError(f"{field_name}.{self.name}", value, self.expected)
        if self.type == "regex":
            try:
                re.compile(value)
            except re.error as e:
                raise MonitorConfigError(
                    f"{field_name}.{self.name}", value, f"expected a valid regular expression ({e})"
                ) from None
        if self.type == "texts" and isinstance(value, str):
            return [value]
        return list(value) if isinstance(value, list) else value


def _is_texts(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, str) and t.strip() for t in value)
    )


@dataclass(frozen=True)
class JudgeInfo:
    """One built-in judge: the MLflow scorer class it builds, and what it needs."""

    name: str
    scorer: str
    llm: bool
    needs: tuple[str, ...]
    description: str
    options: tuple[Option, ...] = ()

    @property
    def session(self) -> bool:
        return "session" in self.needs

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


PII_TYPES = ("email", "phone", "ssn", "credit_card", "ip_address")
_GUIDELINES = Option("guidelines", "texts", "the rules the conversation must follow", True)


def _j(name: str, scorer: str, llm: bool, needs: str, text: str, *options: Option) -> JudgeInfo:
    return JudgeInfo(name, scorer, llm, tuple(needs.split()), text, options)


CATALOG: dict[str, JudgeInfo] = {
    j.name: j
    for j in [
        _j("safety", "Safety", True, "outputs", "harmful or toxic content in the response"),
        _j("relevance_to_query", "RelevanceToQuery", True, "inputs outputs",
           "the response addresses the request"),
        _j("groundedness", "RetrievalGroundedness", True, "retrieval outputs",
           "the response is supported by the retrieved documents"),
        _j("chunk_relevance", "RetrievalRelevance", True, "retrieval inputs",
           "each retrieved chunk is relevant to the request (and their precision)"),
        _j("completeness", "Completeness", True, "inputs outputs",
           "the response answers every part of the request"),
        _j("fluency", "Fluency", True, "outputs", "the response is fluent and natural"),
        _j("summarization", "Summarization", True, "inputs outputs",
           "the response is a faithful summary of the input"),
        _j("tool_call_correctness", "ToolCallCorrectness", True, "inputs tools",
           "the tools called and their arguments suit the request"),
        _j("tool_call_efficiency", "ToolCallEfficiency", True, "inputs tools",
           "no redundant tool calls"),
        _j("pii_detection", "PIIDetection", False, "outputs", "personal data in the response",
           Option("pii_types", "choices", "the kinds of PII to look for", choices=PII_TYPES)),
        _j("response_length", "ResponseLength", False, "outputs",
           "the response length is within bounds",
           Option("min_length", "int", "the shortest acceptable response"),
           Option("max_length", "int", "the longest acceptable response"),
           Option("unit", "choice", "what is counted", choices=("chars", "words"))),
        _j("regex_match", "RegexMatch", False, "outputs", "the response matches a pattern",
           Option("pattern", "regex", "the regular expression", True),
           Option("match_type", "choice", "search anywhere or match the whole response",
                  choices=("search", "fullmatch")),
           Option("case_insensitive", "bool", "ignore case")),
        _j("conversation_completeness", "ConversationCompleteness", True, "session",
           "the assistant addressed every user request of the conversation"),
        _j("user_frustration", "UserFrustration", True, "session",
           "the user got frustrated: none, resolved or unresolved"),
        _j("knowledge_retention", "KnowledgeRetention", True, "session",
           "the assistant keeps what the user said in earlier turns"),
        _j("conversational_safety", "ConversationalSafety", True, "session",
           "harmful content anywhere in the conversation"),
        _j("conversational_role_adherence", "ConversationalRoleAdherence", True, "session",
           "the assistant stays in its role"),
        _j("conversational_guidelines", "ConversationalGuidelines", True, "session",
           "the conversation follows the given guidelines", _GUIDELINES),
        _j("conversational_tool_call_efficiency", "ConversationalToolCallEfficiency", True,
           "session", "no redundant tool calls across the conversation"),
    ]
}  # fmt: skip

_GROUND_TRUTH = (
    "it compares against expectations (ground truth: expected_response or expected_facts), "
    "which production traces do not carry"
)
#: Names of MLflow scorers that cannot run on production traffic, and why.
REFUSED: dict[str, str] = {
    "correctness": _GROUND_TRUTH,
    "equivalence": _GROUND_TRUTH,
    "expectations_guidelines": _GROUND_TRUTH.replace(
        "expected_response or expected_facts", "per-row guidelines"
    ),
    "retrieval_sufficiency": _GROUND_TRUTH + " (without them its prompt has no answer to check "
    "the retrieved documents against)",
    "guidelines": "guidelines are configured as {'guidelines': {'name': ['rule', ...]}} "
    "(GuidelinesJudge), each judged under its own name",
    "retrieval_groundedness": "it is named 'groundedness' here, as in Databricks",
    "retrieval_relevance": "it is named 'chunk_relevance' here, as in Databricks",
}

LLM_JUDGES = tuple(n for n, j in CATALOG.items() if j.llm)
DETERMINISTIC_JUDGES = tuple(n for n, j in CATALOG.items() if not j.llm)
SESSION_JUDGES = tuple(n for n, j in CATALOG.items() if j.session)


def judge_info(field_name: str, name: Any) -> JudgeInfo:
    """The catalog entry of ``name``, or an error saying why it cannot run / what can."""
    if isinstance(name, str) and name in CATALOG:
        return CATALOG[name]
    if isinstance(name, str) and name in REFUSED:
        raise MonitorConfigError(field_name, name, f"this judge cannot run here: {REFUSED[name]}")
    raise MonitorConfigError(field_name, name, f"expected one of {list(CATALOG)}")


def check_options(info: JudgeInfo, args: Any, field_name: str) -> dict[str, Any]:
    """A judge's options, each checked against its type; required ones present."""
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise MonitorConfigError(field_name, args, "expected a dict of scorer arguments")
    allowed = [o.name for o in info.options]
    unknown = sorted(str(k) for k in set(args) - set(allowed))
    if unknown:
        what = f"expected only {', '.join(allowed)}" if allowed else "expected no arguments"
        raise MonitorConfigError(field_name, dict(args), f"{what} (unknown: {', '.join(unknown)})")
    out = {}
    for option in info.options:
        if option.name in args:
            out[option.name] = option.check(field_name, args[option.name])
        elif option.required:
            raise MonitorConfigError(
                f"{field_name}.{option.name}", None, f"{option.expected} (required)"
            )
    if info.name == "response_length":
        _check_length_bounds(field_name, out)
    return out


def _check_length_bounds(field_name: str, args: dict[str, Any]) -> None:
    lo, hi = args.get("min_length"), args.get("max_length")
    if lo is None and hi is None:
        raise MonitorConfigError(field_name, args, "expected min_length, max_length or both")
    if lo is not None and hi is not None and lo > hi:
        raise MonitorConfigError(field_name, args, "expected min_length <= max_length")
