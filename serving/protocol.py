"""Request bodies of the OpenAI-compatible API, validated with the limits OpenAI documents.

Unknown fields are ignored, as OpenAI-compatible servers do, so standard clients keep working;
known fields the server cannot honour are refused by name rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

# OpenAI's completions endpoint returns 16 tokens when `max_tokens` is not given.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"] = Field(description="Only text parts are supported by this server.")
    text: str = Field(description="The text of this part.")


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str | list[TextPart] | None = Field(None, description="Text, or a list of text parts.")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def template_role(self) -> str:
        # `developer` is OpenAI's newer name for the system role.
        return "system" if self.role == "developer" else self.role


class ChatTemplateKwargs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enable_thinking: bool | None = Field(
        None,
        description="Think Fusion: true returns a reasoning trace in `reasoning`, false answers directly.",
    )


class StreamOptions(_Lenient):
    include_usage: bool = Field(False, description="Send a final chunk with token usage.")


class _SamplingRequest(_Lenient):
    model: str = Field(min_length=1, description="Id of a model listed by GET /v1/models.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy and deterministic.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: Annotated[list[str], BeforeValidator(_as_list), Field(max_length=4)] | None = Field(
        None, description="A string or up to 4 strings that end generation; they are not returned."
    )
    seed: int | None = Field(None, description="Seed for reproducible sampling.")
    stream: bool = Field(False, description="Stream chunks as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Options for streaming.")
    n: int = Field(1, description="Number of choices; only 1 is supported.")
    presence_penalty: float = Field(0.0, description="Not supported; must be 0.")
    frequency_penalty: float = Field(0.0, description="Not supported; must be 0.")
    user: str | None = Field(None, description="End-user identifier, kept for auditing.")

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send several requests for several choices")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported by this server; omit the field or set it to 0")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="OpenAI's newer name for `max_tokens`; it wins when both are given."
    )
    chat_template_kwargs: ChatTemplateKwargs | None = Field(None, description="Options for the chat template.")
    logprobs: bool = Field(False, description="Not supported; must be false.")
    tools: list[Any] | None = Field(None, description="Not supported; must be absent or empty.")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool) -> bool:
        if value:
            raise ValueError("logprobs are not supported by this server")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool calling is not supported by this server")
        return value

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="Text or token ids, or a list of either for several choices."
    )
    echo: bool = Field(False, description="Not supported; must be false.")
    logprobs: int | None = Field(None, description="Not supported; must be absent.")
    suffix: str | None = Field(None, description="Not supported; must be absent.")

    @field_validator("echo", "logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value: object, info: ValidationInfo) -> object:
        if value:
            raise ValueError(f"`{info.field_name}` is not supported by this server")
        return value

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list) and not value:
            raise ValueError("`prompt` must not be an empty list")
        return value

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: text or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def token_limit(self) -> int:
        return self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
