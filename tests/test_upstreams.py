"""Upstream OpenAI-compatible endpoints behind the gateway: egress checks, in-country routing, masking."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from policies import default_policy_path, parse_policy

FOREIGN_EGRESS = """      - name: foreign-llm
        country: US
        hosts: [llm.example.com]
        ports: [443]
        purpose: A public-data model abroad.
"""
HELLO = [{"role": "user", "content": "안녕하세요! 자기소개를 해 주세요."}]
# An answer whose phone number is split across two streamed chunks.
SCRIPTED_PIECES = ["연락처는 010-12", "34-5678 입니다. 메일은 hong@exa", "mple.kr 입니다."]


def scripted_upstream_app() -> object:
    """An OpenAI-compatible server that always answers with SCRIPTED_PIECES: a stand-in for an external model."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    api = FastAPI()

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        payload = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    @api.post("/v1/chat/completions")
    async def chat(body: dict) -> object:
        if body.get("stream"):

            async def events() -> object:
                yield chunk({"role": "assistant", "content": ""})
                for piece in SCRIPTED_PIECES:
                    yield chunk({"content": piece})
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        message = {"role": "assistant", "content": "".join(SCRIPTED_PIECES)}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }

    return api


@pytest.fixture(scope="module")
def scripted_upstream(allocate_port: Callable[[], int]) -> Iterator[str]:
    import uvicorn

    port = allocate_port()
    server = uvicorn.Server(uvicorn.Config(scripted_upstream_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    with httpx.Client() as probe:
        for _ in range(300):
            try:
                probe.get(f"http://127.0.0.1:{port}/docs", timeout=0.1)
                break
            except httpx.TransportError:
                thread.join(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def gateway(stack: object, scripted_upstream: str, api_key: str) -> Iterator[str]:
    """A second gateway application in the same Serve instance, with two upstreams."""
    from ray import serve

    from serving.app import build_app
    from serving.config import ServingConfig, Upstream

    text = default_policy_path().read_text(encoding="utf-8")
    policy = parse_policy(text.replace("  imageRegistries:\n", FOREIGN_EGRESS + "\n  imageRegistries:\n"))
    config = ServingConfig(
        upstreams=[
            Upstream(name="axk1-relay", url=f"{stack.base_url}/v1", model="axk1-tiny", api_key=api_key),
            Upstream(name="foreign-llm", url="https://llm.example.com/v1"),
            Upstream(name="scripted", url=scripted_upstream),
        ]
    )
    serve.run(build_app(config, policy, stack.card, stack.openbao.access), name="gateway2", route_prefix="/gw2")
    yield f"{stack.base_url}/gw2/v1"
    serve.delete("gateway2")


@pytest.fixture(scope="module")
def via_gateway(gateway: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway, api_key=api_key, max_retries=0, timeout=60)


def test_upstreams_are_listed_with_their_egress_rule(via_gateway: openai.OpenAI) -> None:
    models = {model.id: model.model_extra for model in via_gateway.models.list().data}
    assert set(models) == {"axk1-tiny", "axk1-relay", "foreign-llm", "scripted"}
    assert models["axk1-relay"]["egress_rule"] == "spec.sites[local]"
    assert models["foreign-llm"]["egress_rule"] == "spec.egress.allow[foreign-llm]"


def test_relayed_answer_matches_the_upstream(via_gateway: openai.OpenAI, client: openai.OpenAI) -> None:
    relayed = via_gateway.chat.completions.create(model="axk1-relay", messages=HELLO, max_tokens=12, temperature=0)
    direct = client.chat.completions.create(model="axk1-tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert relayed.model == "axk1-relay"
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    chunks = list(
        via_gateway.chat.completions.create(
            model="axk1-relay", messages=HELLO, max_tokens=12, temperature=0, stream=True
        )
    )
    assert {chunk.model for chunk in chunks} == {"axk1-relay"}
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == direct.choices[0].message.content


def test_relayed_completions(via_gateway: openai.OpenAI, client: openai.OpenAI) -> None:
    relayed = via_gateway.completions.create(model="axk1-relay", prompt="서울의 날씨는", max_tokens=5, temperature=0)
    direct = client.completions.create(model="axk1-tiny", prompt="서울의 날씨는", max_tokens=5, temperature=0)
    assert relayed.choices[0].text == direct.choices[0].text


def test_personal_data_is_redacted_before_it_reaches_the_upstream(via_gateway: openai.OpenAI, state_dir: Path) -> None:
    via_gateway.chat.completions.create(
        model="axk1-relay", messages=[{"role": "user", "content": "연락처 010-1234-5678 입니다"}], max_tokens=2
    )
    records = [
        json.loads(line)
        for segment in sorted((state_dir / "audit").glob("audit-*.jsonl"))
        for line in segment.read_text().splitlines()
    ]
    gateway_record, upstream_record = [r for r in records if r["kind"] == "request"][-2:]
    assert (gateway_record["model"], gateway_record["decision"], gateway_record["pii"]) == (
        "axk1-relay",
        "redact",
        {"KR_PHONE": 1},
    )
    assert gateway_record["upstream"].endswith("/v1")
    # What the upstream received carried no identifier at all.
    assert (upstream_record["model"], upstream_record["pii"], upstream_record["decision"]) == ("axk1-tiny", {}, "allow")


def test_in_country_data_is_never_sent_abroad(via_gateway: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        via_gateway.chat.completions.create(
            model="foreign-llm", messages=[{"role": "user", "content": "연락처 010-1234-5678"}], max_tokens=2
        )
    assert caught.value.status_code == 503
    assert caught.value.code == "no_in_country_deployment"
    assert "rule spec.dataClasses.personal.inCountryOnly" in caught.value.body["message"]


def test_public_data_may_go_abroad_and_unreachable_upstreams_are_502(via_gateway: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        via_gateway.chat.completions.create(model="foreign-llm", messages=HELLO, max_tokens=2)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"


def test_blocked_data_is_refused_before_routing(via_gateway: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        via_gateway.chat.completions.create(
            model="foreign-llm", messages=[{"role": "user", "content": "주민번호 900101-1234568"}], max_tokens=2
        )
    assert caught.value.code == "data_class_blocked"


def test_an_upstream_off_the_allowlist_refuses_to_start(stack: object) -> None:
    from serving.app import ResidencyViolation, build_app
    from serving.config import ServingConfig, Upstream

    config = ServingConfig(upstreams=[Upstream(name="gpt", url="https://api.openai.com/v1")])
    with pytest.raises(ResidencyViolation) as caught:
        build_app(
            config, parse_policy(default_policy_path().read_text(encoding="utf-8")), stack.card, stack.openbao.access
        )
    assert str(caught.value) == (
        "refusing upstream `gpt` at https://api.openai.com/v1: `https://api.openai.com/v1` is neither a site nor on "
        "the egress allowlist; egress is denied by default (spec.egress.default)"
    )


def test_identifiers_split_across_streamed_chunks_are_masked(via_gateway: openai.OpenAI) -> None:
    chunks = list(via_gateway.chat.completions.create(model="scripted", messages=HELLO, max_tokens=50, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == "연락처는 [KR_PHONE] 입니다. 메일은 [EMAIL] 입니다."
    for piece in pieces:
        assert "010" not in piece
        assert "hong" not in piece
        assert "1234" not in piece


def test_identifiers_in_a_relayed_answer_are_masked(via_gateway: openai.OpenAI) -> None:
    answer = via_gateway.chat.completions.create(model="scripted", messages=HELLO, max_tokens=50)
    assert answer.choices[0].message.content == "연락처는 [KR_PHONE] 입니다. 메일은 [EMAIL] 입니다."
