"""Bad requests get OpenAI-style error JSON with 400, 404 or 405, never a 500 or a traceback."""

from __future__ import annotations

import httpx
import openai
import pytest

MODEL = "axk1-tiny"
USER = [{"role": "user", "content": "hello"}]


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": MODEL, "messages": []}, "messages", "List should have at least 1 item"),
        ({"model": MODEL}, "messages", "this field is required"),
        ({"messages": USER}, "model", "this field is required"),
        ({"model": MODEL, "messages": USER, "max_tokens": -1}, "max_tokens", "greater than or equal to 1"),
        ({"model": MODEL, "messages": USER, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"model": MODEL, "messages": USER, "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"model": MODEL, "messages": USER, "top_p": 0}, "top_p", "greater than 0"),
        ({"model": MODEL, "messages": USER, "n": 2}, "n", "only n=1 is supported"),
        ({"model": MODEL, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 items"),
        ({"model": MODEL, "messages": USER, "logprobs": True}, "logprobs", "logprobs are not supported"),
        ({"model": MODEL, "messages": USER, "frequency_penalty": 1}, "frequency_penalty", "not supported"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "Input should be"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages.0.content", "valid string"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content.0.type",
            "Input should be 'text'",
        ),
        (
            {"model": MODEL, "messages": USER, "chat_template_kwargs": {"thinking": True}},
            "chat_template_kwargs.thinking",
            "Extra inputs are not permitted",
        ),
        (
            {"model": MODEL, "messages": USER, "chat_template_kwargs": {"enable_thinking": "maybe"}},
            "chat_template_kwargs.enable_thinking",
            "valid boolean",
        ),
    ],
)
def test_invalid_chat_fields_name_the_param(http: httpx.Client, body: dict, param: str, message: str) -> None:
    error = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert message in error["message"]
    assert error["message"].startswith(f"Invalid value for `{param}`: ")


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"model": "axk1-tiny", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = error_of(response, 400)
    assert error["message"] == "We could not parse the JSON body of your request: it is not valid JSON."


@pytest.mark.parametrize(
    "request_options",
    [
        {"json": [1, 2]},
        {"data": {"model": MODEL}},
        {"content": b'{"model": "axk1-tiny"}'},
        {"content": b"", "headers": {"content-type": "application/json"}},
    ],
    ids=["json-array", "form", "no-content-type", "empty"],
)
def test_body_that_is_not_a_json_object_says_how_to_send_one(http: httpx.Client, request_options: dict) -> None:
    error = error_of(http.post("/v1/chat/completions", **request_options), 400)
    assert error["param"] is None
    assert error["message"] == "The request body must be a JSON object sent with `Content-Type: application/json`."


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert caught.value.body["message"] == "The model `gpt-4o` does not exist. Available models: axk1-tiny."


def test_unknown_model_on_completions_and_retrieve(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci", prompt="x")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.code == "model_not_found"


def test_negative_max_tokens_with_the_openai_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=-5)
    assert caught.value.param == "max_tokens"


def test_prompt_longer_than_the_context(client: openai.OpenAI) -> None:
    long_prompt = [{"role": "user", "content": "서울 " * 3000}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=5)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert caught.value.body["message"].startswith(
        "This model's maximum context length is 2048 tokens. However, your messages"
    )


def test_streamed_request_with_a_bad_prompt_fails_before_streaming(client: openai.OpenAI) -> None:
    long_prompt = [{"role": "user", "content": "서울 " * 3000}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=long_prompt, stream=True)
    assert caught.value.code == "context_length_exceeded"


def test_prompt_plus_max_tokens_beyond_the_context(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2048)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "max_tokens"
    assert "in the messages, 2048 in the completion" in caught.value.body["message"]


def test_completion_prompt_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=[999999], max_tokens=2)
    assert caught.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="", max_tokens=2)
    assert caught.value.body["message"] == "`prompt` encodes to no tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", echo=True)
    assert caught.value.body["message"] == "Invalid value for `echo`: `echo` is not supported by this server."
    assert caught.value.param == "echo"


def test_one_bad_prompt_in_a_batch_fails_the_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=["fine", "서울 " * 3000], max_tokens=2)
    assert caught.value.code == "context_length_exceeded"


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    error = error_of(http.get("/v1/engines"), 404)
    assert error["message"] == "Invalid URL (GET /v1/engines)"
    error = error_of(http.get("/v1/chat/completions"), 405)
    assert error["message"] == "Method Not Allowed"


def test_unknown_fields_are_ignored_like_other_openai_servers(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=2, extra_body={"some_vendor_option": 1}
    )
    assert completion.usage.completion_tokens <= 2
