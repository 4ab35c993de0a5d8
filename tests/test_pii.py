"""Korean personal-data detectors: checksums, context, evasions, look-alikes and offsets."""

from __future__ import annotations

import pytest

from policies.pii import REPORT_THRESHOLD, Finding, PiiType, detect, redact
from tests.pii_samples import bad_check_digit, business_number, luhn_complete, registration_number

RRN = registration_number("900101123456")  # born 1990-01-01, male
FRN = registration_number("850315512345", foreigner=True)
BRN = business_number("220811234")
CARD = luhn_complete("453201511283036")


def spans(text: str) -> list[tuple[str, str]]:
    return [(finding.type.value, text[finding.start : finding.end]) for finding in detect(text)]


def hyphenated(number: str) -> str:
    return f"{number[:6]}-{number[6:]}"


# --- resident and foreigner registration numbers ---------------------------------------------------


def test_rrn_with_valid_checksum_is_found_with_or_without_context() -> None:
    assert spans(f"본인 {hyphenated(RRN)} 확인") == [("KR_RRN", hyphenated(RRN))]
    assert spans(f"no context {RRN} here") == [("KR_RRN", RRN)]
    (finding,) = detect(f"주민등록번호: {hyphenated(RRN)}")
    assert finding.score > detect(f"번호 {hyphenated(RRN)}")[0].score


@pytest.mark.parametrize("context", ["주민등록번호", "주민번호", "RRN", "주민 등록 번호"])
def test_failed_checksum_is_kept_in_an_rrn_context(context: str) -> None:
    number = hyphenated(bad_check_digit(RRN))
    (finding,) = detect(f"{context}: {number}")
    assert finding.type is PiiType.KR_RRN
    assert REPORT_THRESHOLD <= finding.score < detect(f"{context}: {hyphenated(RRN)}")[0].score


def test_post_2020_number_with_random_tail_is_kept_in_context() -> None:
    issued_2021 = "210315-4" + "987650"  # born 2021-03-15, female; random tail fails the checksum
    assert spans(f"아기 주민번호는 {issued_2021} 입니다") == [("KR_RRN", issued_2021)]


def test_post_2020_number_in_canonical_form_is_kept_without_context() -> None:
    assert spans("출생신고 210315-4987650 완료") == [("KR_RRN", "210315-4987650")]


def test_bare_date_like_number_with_failed_checksum_and_no_context_is_not_flagged() -> None:
    assert detect(f"주문 {hyphenated(bad_check_digit(RRN))} 배송") == []
    assert detect(f"serial {bad_check_digit(RRN)}") == []


@pytest.mark.parametrize("number", ["901301-1234567", "900230-1234567"], ids=["month-13", "february-30"])
def test_impossible_dates_are_not_registration_numbers(number: str) -> None:
    assert detect(f"주민번호 {number}") == []


def test_future_birth_dates_are_not_registration_numbers() -> None:
    assert detect("주민번호 991231-3234567") == []  # 2099-12-31


def test_foreigner_number_uses_its_own_checksum_and_gender_digits() -> None:
    assert spans(f"외국인등록번호 {hyphenated(FRN)}") == [("KR_FRN", hyphenated(FRN))]
    resident_checksum = registration_number("850315512345")
    assert resident_checksum != FRN
    assert detect(f"번호 {hyphenated(resident_checksum)}") == []


# --- business registration numbers ---------------------------------------------------------------


def test_business_number_needs_its_checksum() -> None:
    written = f"{BRN[:3]}-{BRN[3:5]}-{BRN[5:]}"
    assert spans(f"상호 (주)예시, {written}") == [("KR_BRN", written)]
    assert spans(f"사업자등록번호 {BRN}") == [("KR_BRN", BRN)]
    wrong = bad_check_digit(BRN)
    assert detect(f"사업자등록번호 {wrong[:3]}-{wrong[3:5]}-{wrong[5:]}") == []


def test_bare_ten_digits_are_not_a_business_number_without_context() -> None:
    assert detect(f"reference {BRN}") == []


# --- phone numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "010-1234-5678",
        "01012345678",
        "010 1234 5678",
        "010.1234.5678",
        "011-123-4567",
        "+82-10-1234-5678",
        "+82 10 1234 5678",
        "+82 (0)10-1234-5678",
        "02-123-4567",
        "02-1234-5678",
        "031-123-4567",
        "064)123-4567",
        "070-1234-5678",
    ],
)
def test_phone_forms(number: str) -> None:
    assert spans(f"연락 {number} 부탁") == [("KR_PHONE", number)]


def test_numbers_that_only_look_like_phones() -> None:
    assert detect("1588-1234 고객센터") == []
    assert detect("0212345678") == []  # landline without separators: too ambiguous to flag
    assert detect("010-1234-56789") == []  # one digit too many


# --- passports and driver's licences ------------------------------------------------------------


def test_passports_old_and_new_formats() -> None:
    assert spans("여권번호 M12345678") == [("KR_PASSPORT", "M12345678")]
    assert spans("passport: M123A4567") == [("KR_PASSPORT", "M123A4567")]
    assert spans("발급 M123A4567 완료") == [("KR_PASSPORT", "M123A4567")]


def test_old_passport_form_without_context_is_a_product_code() -> None:
    assert detect("모델명 S12345678 재고 있음") == []


def test_driver_licence_region_whitelist() -> None:
    assert spans("운전면허번호 11-12-345678-90") == [("KR_DRIVER_LICENSE", "11-12-345678-90")]
    assert spans("면허 서울 12-345678-90") == [("KR_DRIVER_LICENSE", "서울 12-345678-90")]
    assert spans("번호 13-19-000123-45") == [("KR_DRIVER_LICENSE", "13-19-000123-45")]
    assert detect("운전면허번호 10-12-345678-90") == []  # 10 is not a region code
    assert detect("운전면허번호 27-12-345678-90") == []  # neither is 27


# --- cards, accounts, e-mail ----------------------------------------------------------------------


def test_card_numbers_need_luhn() -> None:
    grouped = f"{CARD[:4]}-{CARD[4:8]}-{CARD[8:12]}-{CARD[12:]}"
    assert spans(f"결제 카드 {grouped}") == [("CREDIT_CARD", grouped)]
    assert spans(f"num {CARD}") == [("CREDIT_CARD", CARD)]
    broken = bad_check_digit(CARD)
    assert detect(f"카드 {broken[:4]}-{broken[4:8]}-{broken[8:12]}-{broken[12:]}") == []


def test_amex_form() -> None:
    amex = luhn_complete("37828224631000")
    written = f"{amex[:4]} {amex[4:10]} {amex[10:]}"
    assert spans(f"card {written}") == [("CREDIT_CARD", written)]


def test_bank_accounts_only_in_context() -> None:
    assert spans("신한은행 계좌 110-123-456789 로 입금") == [("KR_BANK_ACCOUNT", "110-123-456789")]
    assert spans("account 123456789012") == [("KR_BANK_ACCOUNT", "123456789012")]
    assert detect("품번 110-123-456789") == []


def test_emails() -> None:
    assert spans("문의: hong.gildong+ai@mail.example.co.kr.") == [("EMAIL", "hong.gildong+ai@mail.example.co.kr")]
    assert detect("not an email: user@localhost or @handle") == []


# --- look-alikes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "회의 날짜는 2024-11-23 이고 2024.11.23 에도 씁니다",
        "주문번호 20241123-000123 배송 준비",
        "운송장 1Z999AA10123456784, 6091-2345-6789",
        "ISBN 978-89-12345-67-8 and ISBN-13 9788912345678",
        "version 1.2.3.4, build 2024.11.23.1, python 3.11.7",
        "IP 192.168.0.1, port 8080, 3.14159265358979",
        "총액 1,234,567원, 수량 12개, 2026년 11월 23일",
        "timestamp 1732345678901 ms",
    ],
)
def test_look_alikes_are_not_flagged(text: str) -> None:
    assert detect(text) == []


# --- evasions and offsets -------------------------------------------------------------------------


def test_full_width_digits_and_hyphens() -> None:
    text = "주민번호 " + hyphenated(RRN).translate({ord(c): chr(ord(c) + 0xFEE0) for c in "0123456789-"})
    assert spans(text) == [("KR_RRN", text[5:])]


@pytest.mark.parametrize("dash", ["‐", "‑", "–", "—", "−", "﹣", "－"])
def test_hyphen_variants(dash: str) -> None:
    number = f"010{dash}1234{dash}5678"
    assert spans(f"연락처 {number}") == [("KR_PHONE", number)]


def test_spaces_and_dots_between_digits() -> None:
    spaced = " ".join(RRN)
    dotted = f"{RRN[:6]}.{RRN[6:]}"
    assert spans(f"주민번호 {spaced} 끝") == [("KR_RRN", spaced)]
    assert spans(f"주민번호 {dotted}") == [("KR_RRN", dotted)]


def test_zero_width_characters_inside_numbers_keep_original_offsets() -> None:
    hidden = "\u200b".join(hyphenated(RRN))
    text = f"앞부분 텍스트 🙂 주민번호 {hidden} 뒷부분 hong\u200d@example.com"
    found = detect(text)
    assert [(f.type, text[f.start : f.end]) for f in found] == [
        (PiiType.KR_RRN, hidden),
        (PiiType.EMAIL, "hong\u200d@example.com"),
    ]


def test_offsets_are_in_the_original_text() -> None:
    text = f"A: {hyphenated(RRN)}, B: ０１０-１２３４-５６７８, C: x@y.kr"
    for finding in detect(text):
        assert isinstance(finding, Finding)
        assert text[finding.start : finding.end] in {hyphenated(RRN), "０１０-１２３４-５６７８", "x@y.kr"}


def test_overlaps_keep_the_most_confident_reading() -> None:
    # A resident number that also passes Luhn is still reported once, as a resident number.
    text = f"주민번호 {RRN}"
    assert [f.type for f in detect(text)] == [PiiType.KR_RRN]


def test_types_filter() -> None:
    text = f"{hyphenated(RRN)} 010-1234-5678 a@b.kr"
    assert [f.type for f in detect(text, frozenset({PiiType.EMAIL}))] == [PiiType.EMAIL]
    assert len(detect(text)) == 3


def test_text_without_digits_or_at_signs_is_clean() -> None:
    assert detect("안녕하세요, 오늘 날씨가 좋네요. Hello world!") == []


def test_redact_replaces_spans_with_typed_placeholders() -> None:
    text = f"주민번호 {hyphenated(RRN)}, 메일 a@b.kr 끝"
    assert redact(text, detect(text)) == "주민번호 [KR_RRN], 메일 [EMAIL] 끝"
    assert redact("nothing here", []) == "nothing here"


def test_a_failed_candidate_does_not_hide_the_identifier_after_it() -> None:
    card = luhn_complete("927257759194384")
    written = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    text = f"주문 123-5880-6588. {written} 로 확인했습니다"
    assert ("CREDIT_CARD", written) in spans(text)
    assert spans("번호 02-8798-3034. 02-4949-6280 확인") == [("KR_PHONE", "02-8798-3034"), ("KR_PHONE", "02-4949-6280")]


def test_a_landline_next_to_a_bank_name_is_still_a_phone() -> None:
    assert spans("상담 기록: 02-8798-3034. 신한은행 계좌 110-123-456789") == [
        ("KR_PHONE", "02-8798-3034"),
        ("KR_BANK_ACCOUNT", "110-123-456789"),
    ]
