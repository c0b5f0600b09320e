"""The built-in kinds, recognized by Microsoft Presidio's pattern recognizers (the ``pii`` extra).

Presidio's recognizers carry the patterns and the checks that keep false positives down: the
Luhn checksum of card numbers, the IBAN check digits, ``ipaddress`` for IP addresses,
``phonenumbers`` (Google's libphonenumber) for phone numbers, the checksums of the national ids.
They run without Presidio's NLP engine, so no spaCy model is downloaded; the e-mail check uses
``tldextract``'s bundled public-suffix snapshot, never the network.

Each kind also has a *gate*: a cheap necessary condition (``@`` for an e-mail, a run of digits
for a phone number) tested first, so text without a candidate costs one regex scan. E-mail
addresses, phone numbers and IP addresses are then recognized on *windows* (the word around an
``@``, a run of digits and separators...), not the whole text: Presidio's e-mail pattern
backtracks (~1.5 ms on a 250-character text with one ``@``), and ``phonenumbers`` scans the text
once per region (8 regions by default), about 0.1-0.3 ms per window and region.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorConfigError

EXTRA_HINT = "pip install 'mlflow-monitor[pii]'"
WINDOW_CACHE = 4096
_TWO_DIGITS = re.compile(r"\d\d")


@dataclass(frozen=True)
class Kind:
    label: str  # the placeholder's word: [EMAIL]
    recognizer: str  # the class in presidio_analyzer.predefined_recognizers
    gate: re.Pattern[str]  # searched first: no match, no candidate
    window: re.Pattern[str] | None = None  # when given, the recognizer runs on its matches only


KIND_TABLE: dict[str, Kind] = {
    "email": Kind("EMAIL", "EmailRecognizer", re.compile("@"), re.compile(r"\S*@\S*")),
    "phone": Kind(
        "PHONE",
        "PhoneRecognizer",
        re.compile(r"\d(?:[ ().\-/]{0,3}\d){5}"),
        re.compile(r"(?<![\w+])\+?\(?\d[\d ().\-/]{4,24}\d(?!\w)"),
    ),
    "credit_card": Kind("CREDIT_CARD", "CreditCardRecognizer", re.compile(r"\d(?:[ -]?\d){12}")),
    "iban": Kind("IBAN", "IbanRecognizer", re.compile(r"[A-Z][A-Z]\d\d")),
    "ip_address": Kind(
        "IP_ADDRESS",
        "IpRecognizer",
        re.compile(r"\d\.\d|:[0-9A-Fa-f]{0,4}:"),
        re.compile(r"(?<!\w)[0-9A-Fa-f:.]*(?:\d\.\d|:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:.%/]*"),
    ),
}
_NATIONAL = {
    "us_ssn": "UsSsnRecognizer", "us_itin": "UsItinRecognizer", "uk_nino": "UkNinoRecognizer",
    "uk_nhs": "NhsRecognizer", "ca_sin": "CaSinRecognizer", "es_nif": "EsNifRecognizer",
    "es_nie": "EsNieRecognizer", "it_fiscal_code": "ItFiscalCodeRecognizer",
    "pl_pesel": "PlPeselRecognizer",
    "fi_personal_identity_code": "FiPersonalIdentityCodeRecognizer",
    "se_personnummer": "SePersonnummerRecognizer", "de_tax_id": "DeTaxIdRecognizer",
    "in_aadhaar": "InAadhaarRecognizer", "in_pan": "InPanRecognizer",
    "sg_nric_fin": "SgFinRecognizer", "au_tfn": "AuTfnRecognizer", "kr_rrn": "KrRrnRecognizer",
    "th_tnin": "ThTninRecognizer", "tr_national_id": "TrNationalIdRecognizer",
    "ng_nin": "NgNinRecognizer", "za_id_number": "ZaIdNumberRecognizer",
}  # fmt: skip
KIND_TABLE.update({kind: Kind(kind.upper(), name, _TWO_DIGITS) for kind, name in _NATIONAL.items()})


@dataclass(frozen=True)
class Found:
    """One recognized value: ``text[start:end]`` is of ``kind`` (a built-in kind or a pattern
    name), with the recognizer's confidence."""

    start: int
    end: int
    kind: str
    score: float


class Recognizer:
    """One built-in kind: its gate, then its Presidio recognizer, on the whole text or on each
    window (the findings of a window are kept, so a value repeated across the copies of a
    request, or across traces, is recognized once). ``international`` recognizes the windows
    that start with '+': such numbers read the same from any region, so one region does."""

    def __init__(self, kind: str, presidio: Any, international: Any = None):
        self.kind = kind
        self.spec = KIND_TABLE[kind]
        self._presidio = presidio
        self._international = international
        self._entities = list(presidio.supported_entities)
        self._window = functools.lru_cache(maxsize=WINDOW_CACHE)(self._spans)

    def find(self, text: str) -> Iterator[Found]:
        """The values of this kind in ``text``; call it when the gate matches."""
        if self.spec.window is None:
            for start, end, score in self._spans(text):
                yield Found(start, end, self.kind, score)
            return
        for match in self.spec.window.finditer(text):
            offset = match.start()
            for start, end, score in self._window(match.group()):
                yield Found(offset + start, offset + end, self.kind, score)

    def _spans(self, text: str) -> tuple[tuple[int, int, float], ...]:
        presidio = self._international if text[:1] == "+" and self._international else None
        results = (presidio or self._presidio).analyze(text, self._entities, None)
        spans = [(r.start, r.end, float(r.score)) for r in results if r.score > 0 < r.end - r.start]
        if self.kind == "email":
            spans = [(_after_path(text, start, end), end, score) for start, end, score in spans]
        return tuple(spans)


def _after_path(text: str, start: int, end: int) -> int:
    """Where an e-mail address starts when the match begins with a path: Presidio's pattern
    takes '/' as part of the local part, so '/Users/alice@example.com/app' matches from 'Users'."""
    slash = text.rfind("/", start, text.find("@", start, end))
    return start if slash < 0 else slash + 1


def _offline_email(module: Any) -> Any:
    """Presidio's e-mail recognizer, checking the domain against tldextract's bundled suffix
    list: its default extractor would fetch the list from the internet on first use. Only the
    domain is checked: Presidio checks the whole match, which fails when the local part holds
    a '/' (``/Users/alice@example.com/app``, how Databricks names a user's experiments)."""
    import tldextract

    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(module.EmailRecognizer):  # type: ignore[misc, name-defined]
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text.rpartition("@")[2]).fqdn != ""

    return OfflineEmailRecognizer()


@functools.lru_cache(maxsize=64)
def load(kind: str) -> Recognizer:
    """The recognizer of a built-in kind; ``MonitorConfigError`` naming the extra when
    Presidio is not installed."""
    try:
        import presidio_analyzer.predefined_recognizers as module
    except ImportError as e:
        raise MonitorConfigError(
            "pii.kinds",
            kind,
            f"the built-in kinds need Microsoft Presidio's recognizers ({e.name} is not "
            f"installed): {EXTRA_HINT}; or mask with your own pii.patterns only",
        ) from None
    spec = KIND_TABLE[kind]
    if kind == "email":
        return Recognizer(kind, _offline_email(module))
    if kind == "phone":
        one_region = module.PhoneRecognizer(supported_regions=("US",))
        return Recognizer(kind, module.PhoneRecognizer(), international=one_region)
    return Recognizer(kind, getattr(module, spec.recognizer)())
