"""The OpenAI-compatible API, driven by the official `openai` client against the live embedded stack."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai

MODEL = "axk1-tiny"
HELLO = [{"role": "user", "content": "안녕하세요! 자기소개를 해 주세요."}]
THINK_ON = {"chat_template_kwargs": {"enable_thinking": True}}
THINK_OFF = {"chat_template_kwargs": {"enable_thinking": False}}


def reasoning_of(message: object) -> str | None:
    return (message.model_extra or {}).get("reasoning")


def test_list_and_retrieve_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [MODEL]
    model = client.models.retrieve(MODEL)
    assert model.owned_by == "sovereign-stack"
    assert model.model_extra == {"max_model_len": 2048, "site": "local"}


def test_non_streamed_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_default_mode_is_non_thinking(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
    assert "reasoning" not in (completion.choices[0].message.model_extra or {})


def test_max_tokens_is_honoured_and_reported_as_length(client: openai.OpenAI) -> None:
    # The tiny model's greedy continuation of this prompt does not end within 7 tokens.
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=7, temperature=0)
    assert completion.usage.completion_tokens == 7
    assert completion.choices[0].finish_reason == "length"


def test_max_completion_tokens_is_the_newer_name(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_completion_tokens=3, max_tokens=9, temperature=0
    )
    assert completion.usage.completion_tokens == 3


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    answers = {
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0)
        .choices[0]
        .message.content
        for _ in range(3)
    }
    assert len(answers) == 1


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=24, temperature=1.0, top_p=0.95, seed=seed
        )
        return completion.choices[0].message.content

    assert sample(11) == sample(11)
    assert len({sample(seed) for seed in range(1, 5)}) > 1


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3
    cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streamed_chat_matches_the_non_streamed_answer(client: openai.OpenAI) -> None:
    expected = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1, "tokens must arrive as separate chunks"
    assert "".join(c.choices[0].delta.content for c in content_chunks) == expected.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == [expected.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == expected.usage.model_dump()
    assert all(not (c.choices and "reasoning" in (c.choices[0].delta.model_extra or {})) for c in chunks)


def test_stream_ends_with_done_as_server_sent_events(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in {"stop", "length"}


def test_think_on_returns_reasoning_separately(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=16, temperature=0, extra_body=THINK_ON
    )
    message = completion.choices[0].message
    reasoning = reasoning_of(message)
    assert reasoning
    assert not (message.content and reasoning in message.content)


def test_streamed_think_on_sends_reasoning_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=16, temperature=0, stream=True, extra_body=THINK_ON
    )
    reasoning = "".join(
        (chunk.choices[0].delta.model_extra or {}).get("reasoning") or "" for chunk in stream if chunk.choices
    )
    expected = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=16, temperature=0, extra_body=THINK_ON
    )
    assert reasoning == reasoning_of(expected.choices[0].message)


def test_think_on_and_off_in_one_concurrent_batch(stack: object, api_key: str) -> None:
    modes = [True, False] * 4

    async def batch() -> list[object]:
        async with openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=api_key, max_retries=0) as client:

            async def ask(thinking: bool) -> object:
                extra = THINK_ON if thinking else THINK_OFF
                return await client.chat.completions.create(
                    model=MODEL, messages=HELLO, max_tokens=12, temperature=0, extra_body=extra
                )

            return await asyncio.gather(*(ask(thinking) for thinking in modes))

    completions = asyncio.run(batch())
    for thinking, completion in zip(modes, completions, strict=True):
        message = completion.choices[0].message
        if thinking:
            assert reasoning_of(message), "think-on requests carry a reasoning trace"
        else:
            assert "reasoning" not in (message.model_extra or {}), "think-off requests have none"
            assert message.content
    # Same prompt, same mode, greedy: concurrency must not mix requests' states.
    assert len({reasoning_of(c.choices[0].message) for c, t in zip(completions, modes, strict=True) if t}) == 1
    assert len({c.choices[0].message.content for c, t in zip(completions, modes, strict=True) if not t}) == 1


def test_completions_with_one_and_several_prompts(client: openai.OpenAI) -> None:
    single = client.completions.create(model=MODEL, prompt="서울의 날씨는", max_tokens=5, temperature=0)
    assert single.object == "text_completion"
    assert single.usage.completion_tokens == 5
    batch = client.completions.create(model=MODEL, prompt=["서울의 날씨는", "The weather"], max_tokens=5, temperature=0)
    assert [choice.index for choice in batch.choices] == [0, 1]
    assert batch.choices[0].text == single.choices[0].text
    assert batch.usage.completion_tokens == 10


def test_completions_default_to_sixteen_tokens_like_openai(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="The weather", temperature=0)
    assert completion.usage.completion_tokens <= 16
    assert completion.choices[0].finish_reason == "length" or completion.usage.completion_tokens < 16


def test_completions_accept_token_ids(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt=[5, 6, 7, 8], max_tokens=4, temperature=0)
    assert completion.usage.prompt_tokens == 4


def test_streamed_completions_interleave_choices(client: openai.OpenAI) -> None:
    prompts = ["서울의 날씨는", "The weather"]
    chunks = list(client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0, stream=True))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    batch = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0)
    assert texts == [choice.text for choice in batch.choices]


def test_health_reports_model_site_and_policy(http: httpx.Client, default_policy: object) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model": MODEL,
        "revision": None,
        "site": "local",
        "policy": {"name": "kr-default", "jurisdiction": "KR", "sha256": default_policy.digest()},
    }


def test_client_disconnect_stops_generation_and_frees_the_slot(http: httpx.Client) -> None:
    from ray import serve

    model_server = serve.get_deployment_handle("LLMServer", app_name="sovereign")
    before = model_server.stats.remote().result()
    # No max_tokens: the answer may run to the end of the 2048-token context, far longer than we read.
    body = {"model": MODEL, "messages": HELLO, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        received = 0
        for line in response.iter_lines():
            received += line.startswith("data: ")
            if received == 4:
                break
    for _ in range(10_000):
        stats = model_server.stats.remote().result()
        if stats["cancelled_total"] > before["cancelled_total"] and not stats["engine_unfinished"]:
            break
    assert stats["cancelled_total"] == before["cancelled_total"] + 1, "the model server never saw the disconnect"
    assert stats["running"] == 0
    assert stats["engine_unfinished"] == 0, "vLLM aborted the request"


def test_text_content_parts_equal_a_plain_string(client: openai.OpenAI) -> None:
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "안녕하세요! "}, {"type": "text", "text": "자기소개를 해 주세요."}],
        }
    ]
    as_parts = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=8, temperature=0)
    as_string = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens
