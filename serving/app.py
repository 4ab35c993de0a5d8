"""Assemble the Ray Serve application: the OpenAI ingress in front of the model server (vLLM), as Ray Serve LLM
composes itself, with our ingress in place of its OpenAI one."""

from __future__ import annotations

from ray.serve import Application

from policies import PolicyEvaluator, ResidencyPolicy
from serving.checkpoint import ModelCard, inspect_checkpoint
from serving.config import AccessConfig, ServingConfig
from serving.engine_checks import check_vllm_checkpoint
from serving.ingress import OpenAIIngress
from serving.llm_server import LLMServer
from serving.tiny_model import TINY_MODEL_ID, ensure_tiny_checkpoint
from serving.vllm import local_engine_kwargs


class ResidencyViolation(RuntimeError):
    """The deployment would run somewhere the residency policy does not allow."""


def resolve_model(config: ServingConfig) -> ModelCard:
    """Find (or build) the checkpoint to serve and describe it, without loading its weights."""
    if config.model_path is None:
        tiny = ensure_tiny_checkpoint(config.cache_dir)
        return inspect_checkpoint(tiny, config.served_model_name or TINY_MODEL_ID)
    return inspect_checkpoint(config.model_path, config.served_model_name)


def require_in_country_site(policy: ResidencyPolicy, site: str) -> None:
    """Refuse to serve anywhere the policy does not place inside the jurisdiction."""
    decision = PolicyEvaluator(policy).site_in_country(site)
    if not decision.allowed:
        raise ResidencyViolation(f"refusing to serve on site `{site}`: {decision.reason} ({decision.rule})")


def build_app(config: ServingConfig, policy: ResidencyPolicy, card: ModelCard, access: AccessConfig) -> Application:
    """The application graph: the OpenAI ingress bound to the model server and any upstreams."""
    # A checkpoint vLLM would refuse is named now, not from inside a replica after Serve has started.
    check_vllm_checkpoint(card.path, on_cpu=config.engine_kwargs is None)
    evaluator = PolicyEvaluator(policy)
    for upstream in config.upstreams:
        if upstream.name == card.id:
            raise ValueError(f"upstream `{upstream.name}` has the same name as the served model")
        decision = evaluator.may_send("public", upstream.url)
        if not decision.allowed:
            raise ResidencyViolation(
                f"refusing upstream `{upstream.name}` at {upstream.url}: {decision.reason} ({decision.rule})"
            )
    if (oidc := policy.spec.access.oidc) is not None:
        decision = evaluator.may_send("public", oidc.jwks_url)
        if not decision.allowed:
            raise ResidencyViolation(
                f"refusing the identity provider's keys at {oidc.jwks_url}: {decision.reason} ({decision.rule})"
            )
    engine = config.engine_kwargs or local_engine_kwargs(card.max_model_len, config.dtype)
    model_server = LLMServer.bind(card, engine)
    return OpenAIIngress.bind(
        model_server,
        card,
        config.site,
        policy,
        config.default_enable_thinking,
        config.resolved_state_dir(),
        config.upstreams,
        access,
        frozenset(config.tenants) if config.tenants is not None else None,
    )
