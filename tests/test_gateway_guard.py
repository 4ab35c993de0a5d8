"""The residency guard on the request path, seen through the official openai client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import all_records

MODEL = "axk1-tiny"
RRN = "900101-1234568"


def ask(client: openai.OpenAI, text: str, **options: object) -> object:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0, **options
    )


def test_unique_identifier_is_blocked_without_echoing_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(client, f"제 주민등록번호는 {RRN} 입니다. 확인해 주세요.")
    error = caught.value
    assert error.status_code == 403
    assert error.code == "data_class_blocked"
    assert error.param == "messages"
    assert error.body["message"] == (
        "The residency policy does not allow this request: it contains KR_RRN "
        "(rule spec.dataClasses.unique-identifier). Remove these identifiers and send it again."
    )
    assert RRN not in str(error.body)
    assert "1234568" not in str(error.body)


def test_blocked_streaming_request_fails_before_any_chunk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        ask(client, f"외국인등록번호 {RRN[:7]}5123450", stream=True)


def test_evasions_do_not_get_past_the_guard(client: openai.OpenAI) -> None:
    hidden = "\u200b".join(RRN.translate({ord(c): chr(ord(c) + 0xFEE0) for c in "0123456789"}))
    with pytest.raises(openai.PermissionDeniedError):
        ask(client, f"주민번호 {hidden}")


def test_personal_data_is_redacted_before_the_model_sees_it(client: openai.OpenAI) -> None:
    with_phone = ask(client, "연락처 010-1234-5678 로 연락 주세요")
    with_placeholder = ask(client, "연락처 [KR_PHONE] 로 연락 주세요")
    # The model saw exactly the placeholder: same prompt tokens, same greedy answer.
    assert with_phone.usage.prompt_tokens == with_placeholder.usage.prompt_tokens
    assert with_phone.choices[0].message.content == with_placeholder.choices[0].message.content


def test_every_message_is_inspected_including_system_and_history(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "assistant", "content": f"고객 주민번호 {RRN} 확인했습니다"},
        {"role": "user", "content": "계속"},
    ]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)


def test_completions_are_guarded_too_even_as_token_ids(client: openai.OpenAI, tiny_checkpoint: object) -> None:
    from transformers import AutoTokenizer

    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.completions.create(model=MODEL, prompt=["fine", f"주민번호 {RRN}"], max_tokens=2)
    assert caught.value.param == "prompt"
    ids = AutoTokenizer.from_pretrained(tiny_checkpoint).encode(f"주민번호 {RRN}", add_special_tokens=False)
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(model=MODEL, prompt=ids, max_tokens=2)


def test_clean_requests_pass(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "2024-11-23 회의록 요약"}], "max_tokens": 2},
    )
    assert response.status_code == 200


def test_every_decision_is_audited_without_raw_identifiers(client: openai.OpenAI, state_dir: Path) -> None:
    from policies.audit import LocalKey, open_log, verify

    with pytest.raises(openai.PermissionDeniedError):
        ask(client, f"주민번호 {RRN} 조회")
    ask(client, "연락처 010-1234-5678")
    blocked, redacted = [r for r in all_records(state_dir) if r["kind"] == "request"][-2:]
    assert {k: blocked[k] for k in ("decision", "rule", "pii", "route", "model", "source", "tenant", "role")} == {
        "decision": "deny",
        "rule": "spec.dataClasses.unique-identifier",
        "pii": {"KR_RRN": 1},
        "route": "/v1/chat/completions",
        "model": MODEL,
        "source": "127.0.0.1",
        "tenant": "acme",
        "role": "model-user",
    }
    assert blocked["principal"] == f"key:{client.api_key.split('_')[0].removeprefix('sk-sov-')}"
    assert blocked["promptHmac"] == open_log(state_dir).prompt_hmac(f"주민번호 {RRN} 조회")
    assert (redacted["decision"], redacted["pii"]) == ("redact", {"KR_PHONE": 1})
    log_text = "".join(p.read_text() for p in (state_dir / "audit").glob("audit-*.jsonl"))
    assert "1234568" not in log_text
    assert "010-1234-5678" not in log_text
    result = verify(state_dir / "audit", LocalKey.load(state_dir / "audit.key"))
    assert result.intact, result.problem


def test_stack_start_is_an_audited_admin_action(stack: object, state_dir: Path, default_policy: object) -> None:
    starts = [r for r in all_records(state_dir) if r.get("action") == "stack.start"]
    assert starts
    assert starts[0]["policySha256"] == default_policy.digest()
    assert starts[0]["site"] == "local"
