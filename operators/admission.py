"""What the validating webhook decides, as pure functions: the reasons to reject an object, or none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from operators.planning import deployment_gpu_problems
from operators.reconcile import ModelResolver, ResolutionState, compliance_problems
from operators.resources import DESCRIPTION_ANNOTATION, ModelDeploymentSpec
from policies.loader import PolicyError, parse_policy
from policies.model import API_VERSION, KIND, ResidencyPolicy


def field_problems(error: ValidationError, prefix: str) -> list[str]:
    """Pydantic's errors as `spec.field.path: message`, the way `kubectl` users read field paths."""
    return [
        f"{'.'.join([prefix, *(str(part) for part in detail['loc'])])}: {detail['msg']}"
        for detail in error.errors(include_url=False)
    ]


def review_model_deployment(
    spec: Mapping[str, Any],
    policies: Mapping[str, ResidencyPolicy],
    resolver: ModelResolver,
    gpu_budget: int,
) -> tuple[list[str], list[str]]:
    """Reasons to reject a `ModelDeployment`, and warnings to admit it with.

    Rejected: an invalid spec, an unknown policy, sites outside the jurisdiction, an alias whose
    version was never approved, GPUs that do not match the plan. An unreachable registry is a
    warning: the operator resolves the alias later and reports it in the `ModelResolved` condition.
    """
    try:
        deployment = ModelDeploymentSpec.model_validate(dict(spec))
    except ValidationError as error:
        return field_problems(error, "spec"), []
    policy = policies.get(deployment.policy_ref)
    if policy is None:
        known = ", ".join(sorted(policies)) or "none"
        return [f"spec.policyRef: ResidencyPolicy `{deployment.policy_ref}` is not installed (installed: {known})"], []
    problems = [f"spec.sites: {problem}" for problem in compliance_problems(deployment, policy)]
    resolution = resolver.resolve(deployment.model)
    warnings = []
    if resolution.state is ResolutionState.NOT_APPROVED:
        problems.append(f"spec.model: {resolution.message}")
    elif resolution.state is ResolutionState.REGISTRY_UNAVAILABLE:
        warnings.append(f"spec.model: not checked, {resolution.message}")
    if resolution.size is not None:
        sizing = deployment_gpu_problems(deployment, resolution.size, gpu_budget)
        problems += [f"spec.parallelism: {problem}" for problem in sizing]
    return problems, warnings


def policy_document(body: Mapping[str, Any]) -> dict[str, Any]:
    """The `ResidencyPolicy` object as the policy document `sovereign policy check` reads."""
    metadata = body.get("metadata") or {}
    description = (metadata.get("annotations") or {}).get(DESCRIPTION_ANNOTATION, "")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": metadata.get("name", ""), "description": description},
        "spec": dict(body.get("spec") or {}),
    }


def parse_residency_policy(body: Mapping[str, Any]) -> ResidencyPolicy:
    """Validate a `ResidencyPolicy` object with the same model as a policy file; PolicyError names each field."""
    name = (body.get("metadata") or {}).get("name", "")
    return parse_policy(yaml.safe_dump(policy_document(body), sort_keys=False), source=f"ResidencyPolicy/{name}")


def review_residency_policy(body: Mapping[str, Any]) -> list[str]:
    try:
        parse_residency_policy(body)
    except PolicyError as error:
        return [
            f"{problem.field}: {problem.message}" if problem.field else problem.message for problem in error.problems
        ]
    return []
