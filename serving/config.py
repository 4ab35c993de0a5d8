"""Settings of one embedded serving stack, as `sovereign up` and the tests build it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from policies.state import default_state_dir

# Sequences one model-server replica serves at once: Serve's `max_ongoing_requests` and vLLM's `max_num_seqs`.
MAX_SEQUENCES = 64


class Upstream(BaseModel):
    """An OpenAI-compatible model endpoint served through the gateway, under the same policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Model id clients send to reach this upstream.")
    url: str = Field(
        pattern=r"^https?://", description="Base URL of the upstream OpenAI-compatible API, e.g. https://llm.kr/v1."
    )
    model: str | None = Field(None, description="Model id at the upstream; defaults to `name`.")
    api_key: SecretStr | None = Field(None, description="Bearer key the gateway sends to the upstream, if any.")

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """`NAME=URL`, as `sovereign up --upstream` takes it; the key, if any, from $SOVEREIGN_UPSTREAM_KEY_<NAME>."""
        name, separator, url = text.partition("=")
        if not separator:
            raise ValueError(f"`{text}` is not NAME=URL, e.g. kanana=https://llm.example.kr/v1")
        variable = "SOVEREIGN_UPSTREAM_KEY_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
        return cls(name=name, url=url, api_key=os.environ.get(variable))


class AccessConfig(BaseModel):
    """How the gateway reaches OpenBao; filled in by the launcher once OpenBao is up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vault_addr: str = Field(description="OpenBao (or Vault) address, e.g. http://127.0.0.1:8200.")
    vault_token: SecretStr = Field(description="The gateway's own token, holding only the `sovereign-gateway` policy.")
    vault_timeout_seconds: float = Field(
        2.0, gt=0, description="How long the gateway waits for OpenBao before treating it as unreachable."
    )


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path | None = Field(
        None, description="Local HF-format checkpoint directory; unset serves the tiny built-in A.X K1 model."
    )
    model_uri: str | None = Field(
        None,
        pattern=r"^models:/[^/@]+@[^/@]+$",
        description="A promoted registry version, `models:/NAME@ALIAS`; fetched and verified before it loads.",
    )
    follow_seconds: float | None = Field(
        None,
        gt=0,
        description="With `model_uri`: check the alias this often and roll out a newly promoted version, "
        "verified first; unset loads the version once.",
    )
    served_model_name: str | None = Field(
        None, description="Model id clients send; defaults to `axk1-tiny` or the checkpoint directory's name."
    )
    site: str = Field("local", description="Policy site this deployment runs on; it must be in-country.")
    tenants: list[str] | None = Field(
        None,
        description="Only these tenants may call the local model (a ModelDeployment's `spec.tenants`); unset: "
        "every tenant whose record allows it.",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP API listens on.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; `auto` keeps the checkpoint's."
    )
    engine_kwargs: dict[str, Any] | None = Field(
        None,
        description="vLLM's engine arguments (a Ray Serve LLM `LLMConfig`'s `engine_kwargs`: parallelism, context, "
        "quantization), as the operator plans them; unset runs the embedded CPU engine "
        "(`serving.vllm.local_engine_kwargs`).",
    )
    default_enable_thinking: bool = Field(
        False,
        description="Think Fusion mode for requests that do not set `chat_template_kwargs.enable_thinking`.",
    )
    cache_dir: Path | None = Field(
        None, description="Where the tiny model is built; defaults to $SOVEREIGN_CACHE_DIR or ~/.cache."
    )
    upstreams: list[Upstream] = Field(
        default_factory=list,
        description="OpenAI-compatible endpoints served through the gateway; egress to each is policy-checked.",
    )
    prometheus_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also start a local Prometheus on this port, scraping the gateway with the alert rules loaded.",
    )
    registry_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also start the embedded model registry (MLflow on SQLite) on this port; unset starts none.",
    )
    registry_uri: str | None = Field(
        None,
        pattern=r"^https?://",
        description="An existing MLflow registry server to fetch `model_uri` from, instead of the embedded one.",
    )
    vault_addr: str | None = Field(
        None,
        description="An existing OpenBao or Vault (token from $VAULT_TOKEN or AppRole); unset starts an embedded one.",
    )
    state_dir: Path | None = Field(
        None,
        description="Where the audit log and its key are kept; defaults to $SOVEREIGN_STATE_DIR or ~/.local/state.",
    )

    @model_validator(mode="after")
    def _one_model_source(self) -> ServingConfig:
        if self.model_uri is not None and self.model_path is not None:
            raise ValueError("model: give a checkpoint directory or a models:/NAME@ALIAS reference, not both")
        if self.model_uri is not None and self.registry_uri is None and self.registry_port is None:
            raise ValueError("model: a models:/ reference needs a registry (the embedded one, or registry_uri)")
        if self.follow_seconds is not None and self.model_uri is None:
            raise ValueError("follow: only a models:/NAME@ALIAS reference can be followed")
        if self.registry_uri is not None and self.registry_port is not None:
            raise ValueError("registry-uri: use an existing registry or start the embedded one, not both")
        return self

    def resolved_state_dir(self) -> Path:
        return self.state_dir or default_state_dir()
