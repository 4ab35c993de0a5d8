"""The guard applies the policy's data-class rules to prompts and masks identifiers in streamed answers."""

from __future__ import annotations

import random

import pytest

from policies import PolicyEvaluator, parse_policy
from policies.evaluation import Effect
from policies.guard import Guard, OutputMasker
from policies.loader import default_policy_path
from policies.pii import PiiType, detect, redact

DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")
RRN = "900101-1234568"


def guard_for(text: str = DEFAULT_TEXT) -> Guard:
    return Guard(PolicyEvaluator(parse_policy(text)))


def test_unique_identifiers_are_blocked_with_the_rule_and_types_only() -> None:
    verdict, _ = guard_for().inspect(["안녕하세요", f"제 주민번호는 {RRN}, 전화 010-1234-5678"])
    assert verdict.effect is Effect.DENY
    assert verdict.rule == "spec.dataClasses.unique-identifier"
    assert verdict.counts == {"KR_RRN": 1}
    assert verdict.blocked_types == ["KR_RRN"]
    assert RRN not in repr(verdict)


def test_personal_data_is_redacted_before_the_model_sees_it() -> None:
    verdict, texts = guard_for().inspect(["연락처 010-1234-5678, 메일 hong@example.kr", "질문입니다"])
    assert verdict.effect is Effect.REDACT
    assert verdict.rule == "spec.dataClasses.personal"
    assert verdict.counts == {"EMAIL": 1, "KR_PHONE": 1}
    assert verdict.in_country_rule == "spec.dataClasses.personal.inCountryOnly"
    assert texts == ["연락처 [KR_PHONE], 메일 [EMAIL]", "질문입니다"]


def test_clean_text_is_allowed_unchanged() -> None:
    verdict, texts = guard_for().inspect(["서울의 날씨는 어떤가요?"])
    assert (verdict.effect, verdict.counts, verdict.in_country_only) == (Effect.ALLOW, {}, False)
    assert texts == ["서울의 날씨는 어떤가요?"]


def test_rules_come_from_the_policy_document() -> None:
    stricter = DEFAULT_TEXT.replace("    personal:\n      action: redact", "    personal:\n      action: block")
    verdict, _ = guard_for(stricter).inspect(["전화 010-1234-5678"])
    assert (verdict.effect, verdict.rule) == (Effect.DENY, "spec.dataClasses.personal")
    public_email = DEFAULT_TEXT.replace("    EMAIL: personal", "    EMAIL: public")
    verdict, texts = guard_for(public_email).inspect(["메일 hong@example.kr"])
    assert verdict.effect is Effect.ALLOW
    assert texts == ["메일 hong@example.kr"]


ANSWER = (
    f"고객님의 연락처는 010-1234-5678 이고, 주민번호 {RRN} 는 저장하지 않습니다. "
    "메일 hong.gildong@example.co.kr 로 보내 드릴게요. Card 4532 0151 1283 0366 was declined."
)


def masked(text: str) -> str:
    return redact(text, detect(text))


@pytest.mark.parametrize("seed", range(25))
def test_masked_stream_equals_masking_the_whole_answer(seed: int) -> None:
    chunks, rest, generator = [], ANSWER, random.Random(seed)
    while rest:
        size = generator.randint(1, 6)
        chunks.append(rest[:size])
        rest = rest[size:]
    masker = guard_for().output_masker()
    streamed = "".join(masker.feed(chunk) for chunk in chunks) + masker.flush()
    assert streamed == masked(ANSWER)
    for secret in ("010-1234-5678", RRN, "hong.gildong", "4532"):
        assert secret not in streamed


def test_identifier_split_across_two_deltas_never_leaks_a_part() -> None:
    masker = guard_for().output_masker()
    first = masker.feed("전화번호는 010-12")
    second = masker.feed("34-5678 입니다")
    assert "010" not in first + second
    assert (first + second + masker.flush()) == "전화번호는 [KR_PHONE] 입니다"


def test_prose_is_released_without_waiting() -> None:
    masker = guard_for().output_masker()
    assert masker.feed("안녕하세요, 반갑습니다") == "안녕하세요, 반갑습니다"
    # Only a tail that could still grow into an identifier waits for the next delta.
    assert masker.feed(". 전화 010") == ". 전화"
    assert masker.flush() == " 010"


def test_allowed_types_pass_through() -> None:
    masker = OutputMasker(frozenset({PiiType.KR_RRN}))
    assert masker.feed("메일 a@b.kr 입니다. ") + masker.flush() == "메일 a@b.kr 입니다. "
