"""The redaction policy and its masker (pure): validation, recognition, placeholders and hashes."""

from __future__ import annotations

import json
import sys

import pytest

from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.export.masking import RowMasking, mask_span
from mlflow_monitor_plugin.redaction import SECRET_ENV, masker_for, policy_from
from mlflow_monitor_plugin.redaction.masker import _masker
from mlflow_monitor_plugin.redaction.policy import STANDARD_KINDS, TARGETS
from mlflow_monitor_plugin.redaction.recognizers import load

KEY = {SECRET_ENV: "k" * 32}
TEXT = (
    "Mail Alice.Smith@Example.com or call +1 415-555-2671; card 4111 1111 1111 1111 "
    "(not 4111 1111 1111 1112), IBAN DE89 3704 0044 0532 0130 00, from 192.168.10.23 "
    "and 2001:db8::1, ticket TCK-123456, version 1.2.3 at 10:00:00 on 2026-01-05."
)
RAW = [
    "Alice.Smith@Example.com",
    "415-555-2671",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "192.168.10.23",
    "2001:db8::1",
    "TCK-123456",
]


def hashing(extra=None, env=KEY):
    policy = {"kinds": "standard", "mode": "hash", "patterns": {"ticket": r"TCK-\d{6}"}}
    return masker_for(policy_from({**policy, **(extra or {})}), env)


def test_standard_turns_on_the_common_kinds_everywhere_and_off_is_the_default():
    assert not policy_from(None).enabled and policy_from(None).to_dict() == {}
    assert not policy_from("off").enabled
    standard = policy_from("standard")
    assert standard.kinds == STANDARD_KINDS and standard.where == TARGETS
    assert standard.mode == "placeholder" and standard.describe().startswith("standard;")
    mixed = policy_from({"kinds": ["standard", "us_ssn"], "where": "request,alerts"})
    assert mixed.kinds == (*STANDARD_KINDS, "us_ssn") and mixed.where == ("request", "alerts")
    assert policy_from(mixed.to_dict()) == mixed  # the stored form reads back the same


@pytest.mark.parametrize(
    ("value", "field", "named"),
    [
        ({"kinds": ["email", "passport_photo"]}, "pii.kinds", "allowed: standard, email"),
        ({"kinds": "standard", "mode": "encrypt"}, "pii.mode", "placeholder, hash, drop"),
        ({"kinds": "standard", "where": ["request", "logs"]}, "pii.where", "spans"),
        ({"patterns": {"ticket": "TCK-(\\d"}}, "pii.patterns['ticket']", "re says"),
        ({"patterns": {"anything": ".*"}}, "pii.patterns['anything']", "never matches ''"),
        ({"patterns": {"Email": "x"}}, "pii.patterns name", "lowercase"),
        ({"kinds": "standard", "how": "hash"}, "pii", "only kinds, patterns, mode, where"),
        ({"mode": "hash"}, "pii.kinds", "at least one kind"),
    ],
)
def test_bad_policy_is_refused_naming_field_value_and_what_is_allowed(value, field, named):
    with pytest.raises(MonitorConfigError) as e:
        policy_from(value)
    assert e.value.field == field and named in str(e.value)


def test_every_standard_kind_and_an_operator_pattern_become_placeholders():
    masker = masker_for(policy_from({"kinds": "standard", "patterns": {"ticket": r"TCK-\d{6}"}}))
    masked, found = masker.mask_text(TEXT)
    assert found and not [raw for raw in RAW if raw in masked]
    for token in ("[EMAIL]", "[PHONE]", "[CREDIT_CARD]", "[IBAN]", "[IP_ADDRESS]", "[TICKET]"):
        assert token in masked
    # Luhn, dates, times and versions are not personal data
    for kept in ("4111 1111 1111 1112", "1.2.3", "10:00:00", "2026-01-05"):
        assert kept in masked


def test_hashes_are_equal_for_equal_values_and_depend_on_the_key():
    masker = hashing()
    one, _ = masker.mask_text("alice.smith@example.com paid with 4111-1111-1111-1111")
    two, _ = masker.mask_text("ALICE.SMITH@example.com, card 4111 1111 1111 1111")
    tokens = [t for t in one.split() if t.startswith("[")]
    assert len(tokens) == 2 and all(t in two for t in tokens)
    assert tokens[0].startswith("[EMAIL:") and len(tokens[0]) == len("[EMAIL:]") + 16
    other, _ = masker.mask_text("bob@example.com")
    assert other not in one
    rekeyed = hashing(env={SECRET_ENV: "another key of 32 characters...."})
    assert rekeyed.mask_text("alice.smith@example.com")[0] != tokens[0]


@pytest.mark.parametrize("env", [{}, {SECRET_ENV: "short"}])
def test_hash_without_a_usable_key_is_refused(env):
    with pytest.raises(MonitorConfigError) as e:
        hashing(env=env)
    assert e.value.field == "pii.mode" and SECRET_ENV in str(e.value)


def test_json_stays_json_and_numbers_holding_a_value_become_strings():
    masker = masker_for(policy_from("standard"))
    text = json.dumps({"card": 4111111111111111, "n": 3, "to": ["bob@example.com"], "ok": True})
    masked, found = masker.mask_json_text(text)
    assert found and json.loads(masked) == {
        "card": "[CREDIT_CARD]", "n": 3, "to": ["[EMAIL]"], "ok": True
    }  # fmt: skip
    plain = "no personal data here, just 42 words"
    assert masker.mask_json_text(plain) == (plain, False)


def test_span_content_is_masked_and_its_ids_and_times_are_kept():
    span = {
        "trace_id": "olfzR5f56whjH3AkHaiE5w==", "span_id": "zGcMH6wp6UU=", "name": "chat",
        "start_time_unix_nano": 1796587727617836861, "end_time_unix_nano": 1796587727650315365,
        "events": [{"name": "note", "attributes": {"to": "call +1 415 555 2671"}}],
        "status": {"code": "STATUS_CODE_ERROR", "message": "no user bob@example.com"},
        "attributes": {
            "mlflow.traceRequestId": '"tr-4155552671415555267141555526"',
            "mlflow.spanInputs": json.dumps({"q": "I am alice@example.com"}),
            "user_ip": '"10.1.2.3"',
        },
    }  # fmt: skip
    masker = masker_for(policy_from("standard"))
    out = json.loads(mask_span(RowMasking(masker), json.dumps(span)))
    assert json.loads(out["attributes"]["mlflow.spanInputs"]) == {"q": "I am [EMAIL]"}
    assert out["attributes"]["user_ip"] == '"[IP_ADDRESS]"'
    assert out["events"][0]["attributes"]["to"] == "call [PHONE]"
    assert out["status"]["message"] == "no user [EMAIL]"
    for key in ("trace_id", "span_id", "name", "start_time_unix_nano", "end_time_unix_nano"):
        assert out[key] == span[key]
    assert out["attributes"]["mlflow.traceRequestId"] == span["attributes"]["mlflow.traceRequestId"]
    drop = RowMasking(masker_for(policy_from({"kinds": "email", "mode": "drop"})))
    dropped = json.loads(mask_span(drop, json.dumps(span)))
    assert "mlflow.spanInputs" not in dropped["attributes"] and "user_ip" in dropped["attributes"]


def test_built_in_kinds_without_the_extra_name_it(monkeypatch):
    load.cache_clear()
    _masker.cache_clear()
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # as if not installed
    try:
        with pytest.raises(MonitorConfigError) as e:
            masker_for(policy_from("email"), {})
        assert "mlflow-monitor[pii]" in str(e.value) and e.value.field == "pii.kinds"
        # the operator's own patterns need no extra
        own = masker_for(policy_from({"patterns": {"ticket": r"TCK-\d{6}"}}), {})
        assert own.mask_text("see TCK-123456") == ("see [TICKET]", True)
    finally:
        load.cache_clear()
        _masker.cache_clear()
