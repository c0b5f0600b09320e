"""The built-in kinds, recognized by Microsoft Presidio's pattern recognizers (the ``pii`` extra).

Presidio's recognizers carry the patterns and the checks that keep false positives down: the
Luhn checksum of card numbers, the IBAN check digits, ``ipaddress`` for IP addresses, the
checksums of the national ids; phone numbers are Presidio's too (its regions, leniency and
score) but run straight on ``phonenumbers`` (Google's libphonenumber), without the wrapper that
doubles its cost. They run without Presidio's NLP engine, so no spaCy model is downloaded; the
e-mail check uses ``tldextract``'s bundled public-suffix snapshot, never the network.

Each kind also has a *gate*: a cheap necessary condition (``@`` for an e-mail, six digits for a
phone number) tested first, so text without a candidate costs one regex scan. E-mail
addresses, phone numbers and IP addresses are then recognized on *windows* (the word around an
``@``, a run of digits and separators with the characters around it that ``phonenumbers``
looks at...), not the whole text: Presidio's e-mail pattern backtracks (~1.5 ms on a
250-character text with one ``@``), and ``phonenumbers`` scans the text once per region (8
regions), about 0.1-0.3 ms per window and region.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from mlflow_monitor_plugin.exceptions import MonitorConfigError

EXTRA_HINT = "pip install 'mlflow-monitor[pii]'"
WINDOW_CACHE = 4096
_TWO_DIGITS = re.compile(r"\d\d")
_LAST_SPACE = re.compile(r".*\s", re.DOTALL)
_NOT_SPACES = re.compile(r"\S*")

Windows = Callable[[str], Iterator[tuple[int, int]]]


def _matches(pattern: str) -> Windows:
    compiled = re.compile(pattern)
    return lambda text: (match.span() for match in compiled.finditer(text))


def _words_with_at(text: str) -> Iterator[tuple[int, int]]:
    """The runs of non-space characters that hold an '@' (what ``\\S*@\\S*`` finds, 4x faster:
    that regex reads every word to its end and back), found from each '@' outwards."""
    at, low = text.find("@"), 0
    while at >= 0:
        space = _LAST_SPACE.match(text, low, at)
        end = _NOT_SPACES.match(text, at).end()
        yield (space.end() if space else low), end
        low, at = end, text.find("@", end)


@dataclass(frozen=True)
class Kind:
    label: str  # the placeholder's word: [EMAIL]
    recognizer: str  # the class in presidio_analyzer.predefined_recognizers
    gate: re.Pattern[str]  # searched first: no match, no candidate
    window: Windows | None = None  # when given, the recognizer runs on these spans only
    context: tuple[int, int] = (0, 0)  # characters before and after a window it also reads


KIND_TABLE: dict[str, Kind] = {
    "email": Kind("EMAIL", "EmailRecognizer", re.compile("@"), _words_with_at),
    "phone": Kind(
        "PHONE",
        "PhoneRecognizer",
        re.compile(r"\d(?:[ ().\-/]{0,3}\d){5}"),
        # six digits or more, not inside a word; the character before (an opening bracket, a
        # letter) and the three after (a time's ':MM') decide, for phonenumbers, what it is
        _matches(r"(?:\+|(?<![A-Za-z0-9+]))\d(?:[ ().\-/]{0,3}\d){5,}"),
        (1, 3),
    ),
    "credit_card": Kind("CREDIT_CARD", "CreditCardRecognizer", re.compile(r"\d(?:[ -]?\d){12}")),
    "iban": Kind("IBAN", "IbanRecognizer", re.compile(r"[A-Z][A-Z]\d\d")),
    "ip_address": Kind(
        "IP_ADDRESS",
        "IpRecognizer",
        re.compile(r"[.:](?:(?<=\d\.)\d|(?<=:)[0-9A-Fa-f]{0,4}:)"),  # d.d or :h:, 3x faster
        _matches(r"(?<!\w)[0-9A-Fa-f:.]*(?:\d\.\d|:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:.%/]*"),
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
    request, or across traces, is recognized once)."""

    def __init__(self, kind: str, runner: Runner):
        self.kind = kind
        self.spec = KIND_TABLE[kind]
        self._runner = runner
        self._window = functools.lru_cache(maxsize=WINDOW_CACHE)(self._spans)

    def find(self, text: str) -> Iterator[Found]:
        """The values of this kind in ``text``; call it when the gate matches."""
        if self.spec.window is None:
            for start, end, score in self._spans(text, 0, len(text)):
                yield Found(start, end, self.kind, score)
            return
        before, after = self.spec.context
        for start, end in self.spec.window(text):
            offset = max(0, start - before)
            lead = start - offset
            for a, b, score in self._window(text[offset : end + after], lead, lead + end - start):
                yield Found(offset + a, offset + b, self.kind, score)

    def _spans(self, text: str, start: int, end: int) -> tuple[tuple[int, int, float], ...]:
        """The values in ``text``, whose window is ``text[start:end]`` (the rest is context)."""
        spans = [(a, b, score) for a, b, score in self._runner.spans(text, start, end) if b > a]
        if self.kind == "email":
            spans = [(_after_path(text, a, b), b, score) for a, b, score in spans]
        return tuple(spans)


class Runner(Protocol):
    """Runs one kind's recognition: its values in ``text`` as (start, end, score), score > 0;
    ``text[start:end]`` is the window, the rest context."""

    def spans(self, text: str, start: int, end: int) -> list[tuple[int, int, float]]: ...


class Analyze:
    """A Presidio recognizer with an ``analyze`` of its own (IBAN's), run as it is."""

    def __init__(self, presidio: Any):
        self._presidio, self._entities = presidio, list(presidio.supported_entities)

    def spans(self, text: str, start: int, end: int) -> list[tuple[int, int, float]]:
        results = self._presidio.analyze(text, self._entities, None)
        return [(r.start, r.end, float(r.score)) for r in results if r.score > 0]


class Patterns:
    """A Presidio pattern recognizer's own regexes (compiled as it compiles them) and checks
    (``validate_result``, ``invalidate_result``), scored as its ``analyze`` scores them, less
    the explanation and result objects it builds per match (half the time of a window).
    For the recognizers that keep ``PatternRecognizer.analyze``; the others run their own."""

    def __init__(self, presidio: Any):
        import regex  # Presidio's regex engine

        flags = presidio.global_regex_flags
        self._patterns = [(regex.compile(p.regex, flags=flags), p.score) for p in presidio.patterns]
        self._validate, self._invalidate = presidio.validate_result, presidio.invalidate_result
        self._max, self._min = presidio.MAX_SCORE, presidio.MIN_SCORE

    def spans(self, text: str, start: int, end: int) -> list[tuple[int, int, float]]:
        out = []
        for pattern, pattern_score in self._patterns:
            for match in pattern.finditer(text):
                value = match.group()
                if not value:
                    continue
                valid = self._validate(value)
                score = pattern_score if valid is None else (self._max if valid else self._min)
                if self._invalidate(value):
                    score = self._min
                if score > self._min:
                    out.append((match.start(), match.end(), float(score)))
        return out


def _after_path(text: str, start: int, end: int) -> int:
    """Where an e-mail address starts when the match begins with a path: Presidio's pattern
    takes '/' as part of the local part, so '/Users/alice@example.com/app' matches from 'Users'."""
    slash = text.rfind("/", start, text.find("@", start, end))
    return start if slash < 0 else slash + 1


@functools.cache
def _suffixes() -> Any:
    """tldextract's extractor on its bundled public-suffix snapshot (never the network); built
    once per process (~0.3 s)."""
    import tldextract

    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


def _offline_email(module: Any) -> Any:
    """Presidio's e-mail recognizer, checking the domain against tldextract's bundled suffix
    list: its default extractor would fetch the list from the internet on first use. Only the
    domain is checked (each domain once: they repeat far more than addresses do): Presidio
    checks the whole match, which fails when the local part holds a '/'
    (``/Users/alice@example.com/app``, how Databricks names a user's experiments)."""

    @functools.lru_cache(maxsize=WINDOW_CACHE)
    def known_suffix(domain: str) -> bool:
        return _suffixes()(domain).fqdn != ""

    class OfflineEmailRecognizer(module.EmailRecognizer):  # type: ignore[misc, name-defined]
        def validate_result(self, pattern_text: str) -> bool:
            return known_suffix(pattern_text.rpartition("@")[2].lower())

    return OfflineEmailRecognizer()


class PhoneNumbers:
    """Presidio's phone recognition (its regions, in its order, its leniency and score) without
    its wrapper: ``phonenumbers.PhoneNumberMatcher`` per region, as ``PhoneRecognizer.analyze``
    runs it, less what that adds per match (a second parse to name the region in an
    explanation, result objects, de-duplication: 40% of the time). Regions are tried in turn
    until one reads a number over the whole window: the others could only find it again or a
    part of it (a '+' number reads the same from any region), which Presidio drops as
    duplicates. A US number costs one region, a British one two; a run of digits that is no
    number in any region (an order id, a date) all eight. Overlaps between regions are
    resolved by the masker."""

    def __init__(self, presidio: Any):
        import phonenumbers

        self._matcher = phonenumbers.PhoneNumberMatcher
        self._regions = tuple(presidio.supported_regions)
        self._leniency, self._score = presidio.leniency, presidio.SCORE

    def spans(self, text: str, start: int, end: int) -> list[tuple[int, int, float]]:
        found: set[tuple[int, int]] = set()
        for region in self._regions:
            for match in self._matcher(text, region, leniency=self._leniency):
                found.add((match.start, match.end))
            if any(a <= start and b >= end for a, b in found):
                break
        return [(a, b, self._score) for a, b in sorted(found)]


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
    if kind == "phone":
        return Recognizer(kind, PhoneNumbers(module.PhoneRecognizer()))
    if kind == "email":
        presidio = _offline_email(module)
    else:
        presidio = getattr(module, KIND_TABLE[kind].recognizer)()
    from presidio_analyzer import PatternRecognizer

    own = type(presidio).analyze is not PatternRecognizer.analyze
    return Recognizer(kind, Analyze(presidio) if own else Patterns(presidio))
