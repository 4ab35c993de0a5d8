"""Detect Korean personal data in text: pure Python, no network, offsets in the original text.

Each detector pairs a pattern with validation (dates, gender digits, checksums, Luhn, region codes)
and context words that raise confidence. Evasions are undone before matching: full-width digits
and letters, hyphen variants, zero-width characters, and spaces or dots between digits.

Scores are confidences in [0, 1]; findings below `REPORT_THRESHOLD` are not reported. In short:
- a checksum that verifies gives high confidence;
- resident and foreigner numbers issued since October 2020 have random tails, so a failed checksum
  is kept when the number sits in its context (주민등록번호, 주민번호, RRN, ...) or is written in the
  canonical `YYMMDD-GNNNNNN` form with a birth date from October 2020 on;
- a bare date-like number with a failed checksum and no context is not flagged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class PiiType(StrEnum):
    KR_RRN = "KR_RRN"
    KR_FRN = "KR_FRN"
    KR_BRN = "KR_BRN"
    KR_PHONE = "KR_PHONE"
    KR_PASSPORT = "KR_PASSPORT"
    KR_DRIVER_LICENSE = "KR_DRIVER_LICENSE"
    CREDIT_CARD = "CREDIT_CARD"
    KR_BANK_ACCOUNT = "KR_BANK_ACCOUNT"
    EMAIL = "EMAIL"


REPORT_THRESHOLD = 0.5
# When spans overlap, the higher score wins; on a tie, the type listed first.
_PRIORITY = list(PiiType)


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected identifier: its type, its span `[start, end)` in the original text, a confidence."""

    type: PiiType
    start: int
    end: int
    score: float


# --- normalisation --------------------------------------------------------------------------------

_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}  # ！..～ → !..~
_HYPHENS = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63"), "-")
_TRANSLATION = {**_FULL_WIDTH, **_HYPHENS, 0x3000: " "}  # ideographic space
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"
_INVISIBLE_RUN = re.compile(f"[{_INVISIBLE}]")


def _normalise(text: str) -> tuple[str, list[int] | None]:
    """Undo look-alike characters; same length unless invisible characters had to be removed.

    Returns the normalised text and, when its length differs, each character's index in `text`.
    """
    translated = text.translate(_TRANSLATION)
    if not _INVISIBLE_RUN.search(translated):
        return translated, None
    kept = [index for index, char in enumerate(translated) if char not in _INVISIBLE]
    return "".join(translated[index] for index in kept), kept


# --- building blocks ------------------------------------------------------------------------------

# An optional separator between two digits: a hyphen or dot with up to two spaces around it, or spaces.
_SEP = r"(?:[ \t]{0,2}[.\-][ \t]{0,2}|[ \t]{1,2})?"
_START = r"(?<![0-9A-Za-z])(?<!\d-)"
_END = r"(?![0-9A-Za-z])(?!-\d)"


def _digits(count: int) -> str:
    return r"\d" + (_SEP + r"\d") * (count - 1)


_NON_DIGIT = re.compile(r"\D")


def _digit_string(matched: str) -> str:
    return _NON_DIGIT.sub("", matched)


def _separator_positions(matched: str) -> tuple[int, ...]:
    """After how many digits each separator stands: `900101-1234567` gives (6,)."""
    positions, seen, previous_was_digit = [], 0, False
    for char in matched:
        if char.isdigit():
            seen += 1
            previous_was_digit = True
        elif previous_was_digit:
            positions.append(seen)
            previous_was_digit = False
    return tuple(positions)


# Numeric identifiers are looked for only around runs of digits (separators allowed inside), found in
# one fast scan: prose between them is never scanned again. A window reaches a few characters further
# left, for `+82 ` and licence region names, and one further right, so boundary checks see the text.
_DIGIT_RUN = re.compile(r"\d(?:[ \t.\-()]{0,5}\d){8,}")
_WINDOW_LEFT = 4
Windows = list[tuple[int, int]]


def _windows(text: str) -> Windows:
    return [(max(0, m.start() - _WINDOW_LEFT), min(len(text), m.end() + 1)) for m in _DIGIT_RUN.finditer(text)]


def _in_windows(pattern: re.Pattern[str], text: str, windows: Windows) -> Iterator[re.Match[str]]:
    """Every match at every start position, not only non-overlapping ones.

    A long candidate that starts inside the previous number and fails validation must not hide
    the identifier that follows it: the search resumes one character after each match's start.
    """
    seen = -1
    for start, end in windows:
        position = max(start, seen + 1)
        while (match := pattern.search(text, position, end)) is not None:
            seen = match.start()
            yield match
            position = seen + 1


_CONTEXT_WINDOW_BEFORE = 40
_CONTEXT_WINDOW_AFTER = 20


def _has_context(text: str, start: int, end: int, words: re.Pattern[str]) -> bool:
    return bool(
        words.search(text, max(0, start - _CONTEXT_WINDOW_BEFORE), start)
        or words.search(text, end, end + _CONTEXT_WINDOW_AFTER)
    )


def _words(*words: str) -> re.Pattern[str]:
    """Context words as one case-insensitive pattern that tolerates spacing: `주민 등록번호` counts."""
    spaced = [r"\s*".join(map(re.escape, re.sub(r"\s+", "", word))) for word in words]
    return re.compile("|".join(spaced), re.IGNORECASE)


# --- resident and foreigner registration numbers -------------------------------------------------

_REGISTRATION = re.compile(_START + _digits(13) + _END)
_RRN_CONTEXT = _words("주민등록번호", "주민번호", "주민 등록", "rrn", "resident registration", "주민등록")
_FRN_CONTEXT = _words(
    "외국인등록번호", "외국인번호", "외국인 등록", "frn", "foreigner registration", "alien registration"
)
_CENTURY = {1: 1900, 2: 1900, 3: 2000, 4: 2000, 5: 1900, 6: 1900, 7: 2000, 8: 2000, 9: 1800, 0: 1800}
_RANDOM_TAILS_SINCE = date(2020, 10, 1)
_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)


def _birth_date(digits: str) -> date | None:
    century = _CENTURY[int(digits[6])]
    try:
        born = date(century + int(digits[0:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        return None
    return born if born <= date.today() else None


def _registration_checksum_ok(digits: str, foreigner: bool) -> bool:
    total = sum(int(digit) * weight for digit, weight in zip(digits, _WEIGHTS, strict=False))
    check = ((13 if foreigner else 11) - total % 11) % 10
    return check == int(digits[12])


def _registration_numbers(text: str, windows: Windows) -> Iterator[Finding]:
    for match in _in_windows(_REGISTRATION, text, windows):
        digits = _digit_string(match.group())
        foreigner = digits[6] in "5678"
        born = _birth_date(digits)
        if born is None:
            continue
        kind, words = (PiiType.KR_FRN, _FRN_CONTEXT) if foreigner else (PiiType.KR_RRN, _RRN_CONTEXT)
        in_context = _has_context(text, match.start(), match.end(), words)
        if _registration_checksum_ok(digits, foreigner):
            score = 1.0 if in_context else 0.95
        elif in_context:
            score = 0.7
        elif born >= _RANDOM_TAILS_SINCE and _separator_positions(match.group()) == (6,):
            score = 0.55
        else:
            continue
        yield Finding(kind, match.start(), match.end(), score)


# --- business registration numbers ---------------------------------------------------------------

_BRN = re.compile(_START + _digits(10) + _END)
_BRN_CONTEXT = _words("사업자등록번호", "사업자번호", "사업자 등록", "brn", "business registration", "tax id")
_BRN_WEIGHTS = (1, 3, 7, 1, 3, 7, 1, 3, 5)


def _brn_checksum_ok(digits: str) -> bool:
    total = sum(int(digit) * weight for digit, weight in zip(digits, _BRN_WEIGHTS, strict=False))
    total += int(digits[8]) * 5 // 10
    return (10 - total % 10) % 10 == int(digits[9])


def _business_numbers(text: str, windows: Windows) -> Iterator[Finding]:
    for match in _in_windows(_BRN, text, windows):
        digits = _digit_string(match.group())
        if not _brn_checksum_ok(digits):
            continue
        if _has_context(text, match.start(), match.end(), _BRN_CONTEXT):
            yield Finding(PiiType.KR_BRN, match.start(), match.end(), 0.95)
        elif _separator_positions(match.group()) == (3, 5):
            yield Finding(PiiType.KR_BRN, match.start(), match.end(), 0.8)


# --- phone numbers --------------------------------------------------------------------------------

_COUNTRY = r"\+[ \t]?82" + _SEP + r"(?:\(0\)" + _SEP + r"|0" + _SEP + r")?"
_MOBILE = re.compile(
    r"(?<![0-9A-Za-z+])(?<!\d-)(?:"
    + _COUNTRY
    + r"|0"
    + _SEP
    + r")1"
    + _SEP
    + r"[016789]"
    + r"(?:"
    + _SEP
    + r"\d){7,8}"
    + _END
)
_REQUIRED_SEP = r"(?:[ \t]{0,2}[.\-)][ \t]{0,2}|[ \t]{1,2})"
_LANDLINE = re.compile(
    r"(?<![0-9A-Za-z+])(?<!\d-)(?:"
    + _COUNTRY
    + r"|0)(?:2|[3-6][1-5]|70)"
    + _REQUIRED_SEP
    + r"\d{3,4}"
    + _REQUIRED_SEP
    + r"\d{4}"
    + _END
)
_PHONE_CONTEXT = _words("전화", "연락처", "휴대폰", "핸드폰", "tel", "phone", "mobile", "팩스", "fax")


def _phone_numbers(text: str, windows: Windows) -> Iterator[Finding]:
    for pattern, base in ((_MOBILE, 0.85), (_LANDLINE, 0.8)):
        for match in _in_windows(pattern, text, windows):
            boosted = _has_context(text, match.start(), match.end(), _PHONE_CONTEXT)
            yield Finding(PiiType.KR_PHONE, match.start(), match.end(), min(1.0, base + 0.1 * boosted))


# --- passports and driver's licences ------------------------------------------------------------

_PASSPORT = re.compile(r"(?<![0-9A-Za-z])[MSRGDT](?:(\d{8})|\d{3}[A-Z]\d{4})(?![0-9A-Za-z])")
_PASSPORT_CONTEXT = _words("여권", "passport", "여권번호")


def _passports(text: str, _: Windows) -> Iterator[Finding]:
    for match in _PASSPORT.finditer(text):
        in_context = _has_context(text, match.start(), match.end(), _PASSPORT_CONTEXT)
        old_format = match.group(1) is not None
        # The old letter-and-8-digits form is also a common product code; it needs context.
        score = (0.85 if old_format else 0.9) if in_context else (0.0 if old_format else 0.6)
        if score:
            yield Finding(PiiType.KR_PASSPORT, match.start(), match.end(), score)


_REGIONS = "서울|부산|경기|강원|충북|충남|전북|전남|경북|경남|제주|대구|인천|광주|대전|울산|세종"
_DRIVER_LICENSE = re.compile(
    r"(?<![0-9A-Za-z])(?:(1[1-9]|2[0-6]|28)|(?:"
    + _REGIONS
    + r"))"
    + _SEP
    + r"\d{2}"
    + _SEP
    + r"\d{6}"
    + _SEP
    + r"\d{2}"
    + _END
)
_LICENSE_CONTEXT = _words("운전면허", "면허번호", "driver", "driving licen", "license no")


def _driver_licenses(text: str, windows: Windows) -> Iterator[Finding]:
    for match in _in_windows(_DRIVER_LICENSE, text, windows):
        in_context = _has_context(text, match.start(), match.end(), _LICENSE_CONTEXT)
        hangul_region = match.group(1) is None
        written_as_licence = hangul_region or _separator_positions(match.group()) == (2, 4, 10)
        if in_context or written_as_licence:
            yield Finding(PiiType.KR_DRIVER_LICENSE, match.start(), match.end(), 0.9 if in_context else 0.8)


# --- cards, bank accounts and e-mail --------------------------------------------------------------

_CARD = re.compile(_START + r"\d(?:" + _SEP + r"\d){12,18}" + _END)
_CARD_CONTEXT = _words("카드", "card", "visa", "master", "결제", "신용")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _cards(text: str, windows: Windows) -> Iterator[Finding]:
    for match in _in_windows(_CARD, text, windows):
        digits = _digit_string(match.group())
        if digits[0] not in "3456789" or not _luhn_ok(digits):
            continue
        in_context = _has_context(text, match.start(), match.end(), _CARD_CONTEXT)
        grouped = set(_separator_positions(match.group())) >= {4, 8, 12} or len(digits) == 15
        yield Finding(PiiType.CREDIT_CARD, match.start(), match.end(), 1.0 if in_context else (0.9 if grouped else 0.6))


_ACCOUNT = re.compile(_START + r"\d{2,6}(?:-\d{2,7}){1,4}" + _END + r"|" + _START + r"\d{10,14}" + _END)
_ACCOUNT_CONTEXT = _words(
    "계좌",
    "입금",
    "송금",
    "이체",
    "은행",
    "뱅크",
    "농협",
    "국민",
    "신한",
    "우리",
    "하나",
    "기업",
    "카카오",
    "토스",
    "새마을",
    "우체국",
    "account",
    "acct",
    "bank",
)


def _bank_accounts(text: str, windows: Windows) -> Iterator[Finding]:
    for match in _in_windows(_ACCOUNT, text, windows):
        if 10 <= len(_digit_string(match.group())) <= 14 and _has_context(
            text, match.start(), match.end(), _ACCOUNT_CONTEXT
        ):
            yield Finding(PiiType.KR_BANK_ACCOUNT, match.start(), match.end(), 0.8)


_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")


def _emails(text: str, _: Windows) -> Iterator[Finding]:
    if "@" not in text:
        return
    for match in _EMAIL.finditer(text):
        yield Finding(PiiType.EMAIL, match.start(), match.end(), 0.95)


_DETECTORS: dict[Callable[[str, Windows], Iterator[Finding]], frozenset[PiiType]] = {
    _registration_numbers: frozenset({PiiType.KR_RRN, PiiType.KR_FRN}),
    _business_numbers: frozenset({PiiType.KR_BRN}),
    _phone_numbers: frozenset({PiiType.KR_PHONE}),
    _passports: frozenset({PiiType.KR_PASSPORT}),
    _driver_licenses: frozenset({PiiType.KR_DRIVER_LICENSE}),
    _cards: frozenset({PiiType.CREDIT_CARD}),
    _bank_accounts: frozenset({PiiType.KR_BANK_ACCOUNT}),
    _emails: frozenset({PiiType.EMAIL}),
}
_HAS_DIGIT_OR_AT = re.compile(r"[\d@＠０-９]")


def detect(text: str, types: frozenset[PiiType] | None = None) -> list[Finding]:
    """Every identifier in `text` at or above the report threshold, in order, without overlaps."""
    if not _HAS_DIGIT_OR_AT.search(text):
        return []
    normalised, positions = _normalise(text)
    windows = _windows(normalised)
    candidates = [
        finding
        for detector, produces in _DETECTORS.items()
        if types is None or produces & types
        for finding in detector(normalised, windows)
        if finding.score >= REPORT_THRESHOLD and (types is None or finding.type in types)
    ]
    chosen: list[Finding] = []
    for finding in sorted(candidates, key=lambda f: (-f.score, _PRIORITY.index(f.type), f.start - f.end)):
        if all(finding.end <= kept.start or finding.start >= kept.end for kept in chosen):
            chosen.append(finding)
    chosen.sort(key=lambda f: f.start)
    if positions is None:
        return chosen
    return [Finding(f.type, positions[f.start], positions[f.end - 1] + 1, f.score) for f in chosen]


def placeholder(pii_type: PiiType) -> str:
    """What replaces a redacted identifier: its type, never its value."""
    return f"[{pii_type.value}]"


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with every finding's span replaced by its typed placeholder; findings must not overlap."""
    pieces, position = [], 0
    for finding in sorted(findings, key=lambda f: f.start):
        pieces += [text[position : finding.start], placeholder(finding.type)]
        position = finding.end
    return "".join(pieces) + text[position:]
