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


JSON_TEXTS = [
    json.dumps({"question": "I am alice@example.com, call me on +1 415-555-2671 #7"}),
    json.dumps({"alice@example.com": ["call 020 7946 0958", {"n": 4111111111111111}]}),
    json.dumps(["(415) 555-2671", "030 901820", "+49 30 901820", 4155552671, True, None]),
    json.dumps({"multi": "line\n4155552671 and tab\tbob@example.com"}),
    json.dumps({"messages": [{"role": "user", "content": 'Call:\n(415) 555-2671\n"bob@x.org"'}]}),
    json.dumps({"path": "C:\\Users\\alice@example.com\\n415-555-2671", "at": "10:00"}),
    json.dumps({"log": "2026-01-05 10:00:00 started\r\n+44 20 7946 0958/ext"}),
    json.dumps({"hidden": "alice\u0040example.com"}, ensure_ascii=True),
    json.dumps({"id": "TCK-123456", "note": "ticket TCK-123456 is open"}),
    json.dumps({"a": "x@y.org", "b": "cc", "ip": "10.0.0.1", "v6": "2001:db8::1"}),
    json.dumps("just a string with bob@example.com"),
    '{"truncated": "alice@example.com and more',  # a preview: not JSON, masked as text
    "4111 1111 1111 1111 is not JSON at all",
]


@pytest.mark.parametrize("text", JSON_TEXTS)
@pytest.mark.parametrize(
    "patterns",
    [{}, {"ticket": r"^TCK-\d{6}$"}, {"across": r'y\.org", "b": "cc'}],
    ids=["built-in", "anchored", "across-quotes"],
)
def test_json_masked_in_place_reads_the_same_as_masked_value_by_value(text, patterns):
    """JSON without escapes is masked in its text; the result must be what parsing, masking
    each string and number, and writing it back gives (and valid JSON when the input was)."""
    masker = masker_for(policy_from({"kinds": "standard", "patterns": patterns}))
    masked, found = masker.mask_json_text(text)
    try:
        value = json.loads(text)
    except ValueError:
        assert (masked, found) == masker.mask_text(text)
        return
    expected, expected_found = masker.mask_value(value)
    assert found == expected_found and json.loads(masked) == expected


def test_values_next_to_an_escape_and_anchored_patterns_are_masked_in_json():
    """Found by reading JSON as text: a number after an escaped newline (the 'n' read as a
    letter before it), and an operator's pattern anchored to a whole string, were left as
    they were."""
    masker = masker_for(policy_from({"kinds": "standard", "patterns": {"id": r"^TCK-\d{6}$"}}))
    text = json.dumps({"id": "TCK-123456", "reply": "Sure!\n415-555-2671\nbob@example.com"})
    masked, found = masker.mask_json_text(text)
    assert found and json.loads(masked) == {"id": "[ID]", "reply": "Sure!\n[PHONE]\n[EMAIL]"}
    # a time after a date is no phone number: phonenumbers reads the ':MM' after it
    stamp = json.dumps({"at": "2026-01-05 10:00:00"})
    assert masker.mask_json_text(stamp) == (stamp, False)


@pytest.mark.parametrize(
    "text",
    [
        "call +1 415-555-2671 or (415) 555-2671 today",
        "London 020 7946 0958, Berlin 030 901820, +44 20 7946 0958",
        "Paris 01 23 45 67 89; Mumbai 022 2778 2000; 12345 is an order number",
        "+55 11 91234-5678 / 011 91234 5678 and 2026-01-05 10:00:00",
    ],
)
def test_phone_numbers_are_those_presidio_finds(text):
    """The phone kind runs phonenumbers as Presidio's PhoneRecognizer does (its regions and
    leniency), without its wrapper: the same numbers."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    presidio = PhoneRecognizer().analyze(text, ["PHONE_NUMBER"], None)
    masker = masker_for(policy_from("phone"))
    assert [(f.start, f.end) for f in masker.find(text)] == sorted(
        (r.start, r.end) for r in presidio
    )
    assert presidio, "each text holds a number"


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("email", "mail Alice.Smith@Example.com, bob@x.org; not a@b or c@d.invalidtld"),
        ("credit_card", "card 4111 1111 1111 1111 and 4111-1111-1111-1112, 378282246310005"),
        ("ip_address", "from 192.168.10.23 and 2001:db8::1, not 1.2.3 nor 999.1.1.1 at 10:00"),
        ("us_ssn", "SSN 536-90-4399 or 536904399, not 000-12-3456"),
        ("uk_nino", "NI number AB 12 34 56 C, or QQ123456C"),
        ("es_nif", "DNI 12345678Z, not 12345678A"),
    ],
)
def test_pattern_kinds_find_what_their_presidio_recognizer_finds(kind, text):
    """The pattern kinds run their Presidio recognizer's regexes and checks without its
    result objects: the same values, whole text or windows."""
    import presidio_analyzer.predefined_recognizers as module

    from mlflow_monitor_plugin.redaction.recognizers import KIND_TABLE, _offline_email

    if kind == "email":
        presidio = _offline_email(module)
    else:
        presidio = getattr(module, KIND_TABLE[kind].recognizer)()
    expected = sorted((r.start, r.end) for r in presidio.analyze(text, presidio.supported_entities))
    masker = masker_for(policy_from({"kinds": [kind]}))
    assert [(f.start, f.end) for f in masker.find(text)] == expected and expected
