"""The kopf handlers: thin. They read what is observed, call the pure functions and write back.

`memo` carries the operator's collaborators, set by `sovereign operator run` (and by the tests):
`cluster` (a `Cluster`), `resolver` (a `ModelResolver`), `settings` (`Settings`) and `policies`,
the valid `ResidencyPolicy` documents by name, kept current by the ResidencyPolicy handlers.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from monitoring import catalogue
from operators.admission import field_problems, parse_residency_policy, review_model_deployment, review_residency_policy
from operators.cluster import object_key, ray_service_ready
from operators.reconcile import Deployment, Observed, reconcile, selector
from operators.resources import GROUP, VERSION
from policies.loader import PolicyError

MODEL_DEPLOYMENTS = (GROUP, VERSION, "modeldeployments")
RESIDENCY_POLICIES = (GROUP, VERSION, "residencypolicies")
FINALIZER = f"{GROUP}/cleanup"
RESOLVE_INTERVAL_SECONDS = 60.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    webhook = memo.get("webhook")
    if webhook is not None:
        settings.admission.server = webhook
        settings.admission.managed = f"{GROUP}.admission"


def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    try:
        deployment = Deployment.from_body(body)
    except ValidationError as error:
        message = "; ".join(field_problems(error, "spec"))
        kopf.warn(body, reason="InvalidSpec", message=message)
        catalogue.OPERATOR_RECONCILIATIONS.labels("invalid").inc()
        raise kopf.PermanentError(message) from None
    status = body.get("status") or {}
    ray_service = memo.cluster.get("ray.io/v1", "RayService", deployment.namespace, deployment.name)
    observed = Observed(
        policy=memo.policies.get(deployment.spec.policy_ref),
        resolution=memo.resolver.resolve(deployment.spec.model),
        now=now(),
        serving_version=status.get("modelVersion", ""),
        ray_service_ready=ray_service_ready(ray_service),
        conditions=list(status.get("conditions") or []),
    )
    outcome = reconcile(deployment, observed, memo.settings)
    if outcome.objects is not None:
        for obj in outcome.objects:
            memo.cluster.apply(obj)
        wanted = {object_key(obj) for obj in outcome.objects}
        for removed in memo.cluster.delete_unwanted(deployment.namespace, selector(deployment.name), wanted):
            kopf.info(body, reason="Removed", message=f"deleted {removed}")
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    patch.status.update(outcome.status)
    _record(deployment.namespace, deployment.name, outcome.status["conditions"], outcome.objects)


def _record(namespace: str, name: str, conditions: list[dict[str, Any]], objects: list[Any] | None) -> None:
    """The outcome in the metric catalogue: what `kubectl get mdep` shows, for dashboards and alerts."""
    outcome = "kept" if objects is None else "serving" if objects else "not_serving"
    catalogue.OPERATOR_RECONCILIATIONS.labels(outcome).inc()
    current = {condition["type"]: condition["status"] for condition in conditions}
    for condition in catalogue.MODEL_DEPLOYMENT_CONDITIONS:
        for status in catalogue.CONDITION_STATUSES:
            gauge = catalogue.MODEL_DEPLOYMENT_CONDITION.labels(namespace, name, condition, status)
            gauge.set(1 if current.get(condition) == status else 0)


def _forget(namespace: str, name: str) -> None:
    for condition in catalogue.MODEL_DEPLOYMENT_CONDITIONS:
        for status in catalogue.CONDITION_STATUSES:
            with suppress(KeyError):  # never reconciled, so never recorded
                catalogue.MODEL_DEPLOYMENT_CONDITION.remove(namespace, name, condition, status)


@kopf.on.resume(*MODEL_DEPLOYMENTS)
@kopf.on.create(*MODEL_DEPLOYMENTS)
@kopf.on.update(*MODEL_DEPLOYMENTS, field="spec")
def reconcile_model_deployment(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _reconcile(body, patch, memo)


@kopf.timer(*MODEL_DEPLOYMENTS, interval=RESOLVE_INTERVAL_SECONDS, initial_delay=RESOLVE_INTERVAL_SECONDS)
def follow_alias(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Promotions move aliases in the registry, not in Kubernetes: look again, and roll out what changed."""
    _reconcile(body, patch, memo)


@kopf.on.delete(*MODEL_DEPLOYMENTS)
def clean_up(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Delete what the deployment owned before the finalizer lets it go (not only after, by garbage collection)."""
    metadata = body["metadata"]
    removed = memo.cluster.delete_unwanted(metadata["namespace"], selector(metadata["name"]), set())
    _forget(metadata["namespace"], metadata["name"])
    kopf.info(body, reason="CleanedUp", message=f"deleted {', '.join(removed) or 'nothing'}")


@kopf.on.validate(*MODEL_DEPLOYMENTS, id="modeldeployment-policy", operations=["CREATE", "UPDATE"])
def admit_model_deployment(spec: Mapping[str, Any], memo: kopf.Memo, warnings: list[str], **_: Any) -> None:
    problems, notes = review_model_deployment(spec, memo.policies, memo.resolver, memo.settings.gpu_budget)
    warnings.extend(notes)
    _answer("ModelDeployment", problems)


def _answer(kind: str, problems: list[str]) -> None:
    """Count the review, and refuse the object with every reason at once."""
    catalogue.ADMISSION_REVIEWS.labels(kind, "rejected" if problems else "admitted").inc()
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=422)


@kopf.on.validate(*RESIDENCY_POLICIES, id="residencypolicy-model", operations=["CREATE", "UPDATE"])
def admit_residency_policy(body: kopf.Body, **_: Any) -> None:
    _answer("ResidencyPolicy", review_residency_policy(body))


@kopf.on.resume(*RESIDENCY_POLICIES)
@kopf.on.create(*RESIDENCY_POLICIES)
@kopf.on.update(*RESIDENCY_POLICIES)
def load_residency_policy(body: kopf.Body, name: str, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    generation = int(body["metadata"].get("generation", 1))
    try:
        policy = parse_residency_policy(body)
    except PolicyError as error:
        memo.policies.pop(name, None)
        message = "; ".join(str(problem) for problem in error.problems)
        kopf.warn(body, reason="InvalidPolicy", message=message)
        patch.status.update(_policy_status(generation, "False", "Invalid", message, ""))
        return
    memo.policies[name] = policy
    kopf.info(body, reason="Loaded", message=f"policy {name} in force, digest {policy.digest()[:12]}")
    patch.status.update(_policy_status(generation, "True", "Valid", "the document passed validation", policy.digest()))


@kopf.on.delete(*RESIDENCY_POLICIES, optional=True)
def forget_residency_policy(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.policies.pop(name, None)


def _policy_status(generation: int, status: str, reason: str, message: str, digest: str) -> dict[str, Any]:
    condition = {
        "type": "Valid",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now(),
        "observedGeneration": generation,
    }
    return {"observedGeneration": generation, "digest": digest, "conditions": [condition]}
