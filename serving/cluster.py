"""The Ray Serve application builder for Kubernetes: `import_path: serving.cluster:build` in the
RayService the operator writes for every `ModelDeployment`: the same ingress and vLLM model server as
`sovereign up`, with the planner's engine arguments.

The model was fetched and verified by the pods' init container (`sovereign registry checkout`); the
policy document comes in the arguments, as the operator validated it; OpenBao is reached with the
pod's service account (Kubernetes auth, $VAULT_K8S_ROLE).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from ray.serve import Application

from policies import ResidencyPolicy
from policies.openbao import connect
from serving.app import build_app, require_in_country_site
from serving.checkpoint import ModelCard, inspect_checkpoint
from serving.config import AccessConfig, ServingConfig


class ClusterArguments(BaseModel):
    """The `args` of the Serve application, as `operators.reconcile.serve_application` writes them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path = Field(description="The verified checkout, /models/registry/NAME/VERSION.")
    served_model_name: str = Field(description="Model id clients send.")
    revision: str = Field(description="NAME/VERSION, reported by /healthz.")
    site: str = Field(description="The policy site the pods run on.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("bfloat16", description="Weight dtype.")
    policy: dict[str, Any] = Field(description="The ResidencyPolicy document in force.")
    tenants: list[str] = Field(min_length=1, description="The only tenants that may call the model.")
    llm_config: dict[str, Any] = Field(
        description="Ray Serve LLM's `LLMConfig` as `serving.vllm.llm_config` builds it; its `engine_kwargs` (the "
        "planner's tensor, pipeline, data and expert parallelism) configure the model server's vLLM."
    )


def build(args: dict[str, Any]) -> Application:
    return build_app(*cluster_serving(args))


def cluster_serving(args: dict[str, Any]) -> tuple[ServingConfig, ResidencyPolicy, ModelCard, AccessConfig]:
    """What `build` serves, from the application's arguments: refused on a site outside the jurisdiction."""
    arguments = ClusterArguments.model_validate(args)
    policy = ResidencyPolicy.model_validate(arguments.policy)
    require_in_country_site(policy, arguments.site)
    vault_addr = os.environ["VAULT_ADDR"]
    access = AccessConfig(vault_addr=vault_addr, vault_token=SecretStr(connect(vault_addr).token))
    config = ServingConfig(
        model_path=arguments.model_path,
        served_model_name=arguments.served_model_name,
        site=arguments.site,
        tenants=arguments.tenants,
        dtype=arguments.dtype,
        engine_kwargs=arguments.llm_config["engine_kwargs"] | {"dtype": arguments.dtype},
        host="0.0.0.0",  # the Serve proxy inside the pod; the NetworkPolicy and Service bound who reaches it
    )
    card = inspect_checkpoint(arguments.model_path, arguments.served_model_name)
    return config, policy, dataclasses.replace(card, revision=arguments.revision), access
