"""The metric catalogue: the one place metric names, types, labels and buckets are defined.

Naming follows Prometheus: the `sovereign_` prefix, base units (seconds, ratios), `_total` on
counters (prometheus-client appends it). Labels never carry prompt text, keys or personal data;
`tenant` is the only identity label.

One scrape target for the embedded stack: when `SOVEREIGN_METRICS_DIR` is set (the launcher sets
it before Ray starts, so every Serve replica inherits it), each process writes its samples to
memory-mapped files in that directory (prometheus-client's multiprocess mode), and the gateway's
`/metrics` merges the files of every process: counters and histograms are summed, gauges use the
mode named on each (`livesum`, `livemax`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from policies.registry import Gate
from policies.state import METRICS_DIR_ENV

PREFIX = "sovereign"


def _share_through_files() -> str | None:
    """Switch this process to multiprocess values when the stack shares a metrics directory."""
    directory = os.environ.get(METRICS_DIR_ENV)
    if directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.MultiProcessValue()
    return directory


SHARED_DIR = _share_through_files()
REGISTRY = CollectorRegistry(auto_describe=True)

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Think mode is a label, so one dashboard compares the two modes that share a deployment.
MODES = ("think", "non_think")

# --- gateway -------------------------------------------------------------------------------------

GATEWAY_REQUESTS = Counter(
    f"{PREFIX}_gateway_requests",
    "HTTP requests answered by the gateway, by route template, status code and tenant (`none` before auth).",
    ["route", "status", "tenant"],
    registry=REGISTRY,
)
GATEWAY_LATENCY = Histogram(
    f"{PREFIX}_gateway_request_duration_seconds",
    "Time from request to the end of the response at the gateway, by route template.",
    ["route"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)

# --- serving -------------------------------------------------------------------------------------

TIME_TO_FIRST_TOKEN = Histogram(
    f"{PREFIX}_time_to_first_token_seconds",
    "Time from a generation request reaching the model server to its first generated token, by mode.",
    ["mode"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
INTER_TOKEN_LATENCY = Histogram(
    f"{PREFIX}_inter_token_latency_seconds",
    "Time between consecutive generated tokens of one request, by mode.",
    ["mode"],
    buckets=TOKEN_BUCKETS,
    registry=REGISTRY,
)
GENERATION_LATENCY = Histogram(
    f"{PREFIX}_generation_duration_seconds",
    "End-to-end time of a generation in the model server, from request to last token, by mode.",
    ["mode"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    f"{PREFIX}_prompt_tokens", "Prompt tokens processed (prefill), by mode.", ["mode"], registry=REGISTRY
)
GENERATION_TOKENS = Counter(
    f"{PREFIX}_generation_tokens", "Tokens generated (decode), by mode.", ["mode"], registry=REGISTRY
)
REQUESTS_RUNNING = Gauge(
    f"{PREFIX}_requests_running",
    "Generations decoding now, summed over model-server replicas.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
REQUESTS_WAITING = Gauge(
    f"{PREFIX}_requests_waiting",
    "Generations accepted but not yet at their first token (queued for prefill), summed over replicas.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

# --- the engine (vLLM) ---------------------------------------------------------------------------
# vLLM records these itself in the model-server process (its `AsyncLLM`, stats logging on); they reach
# the gateway's `/metrics` through the same shared directory as ours. Named here because the dashboards
# and alerts use them; the live test checks vLLM really exports each.


@dataclass(frozen=True)
class EngineMetric:
    name: str
    type: Literal["counter", "gauge", "histogram"]
    description: str


ENGINE_TTFT = EngineMetric(
    "vllm:time_to_first_token_seconds", "histogram", "Time from arrival in vLLM to the first token."
)
ENGINE_ITL = EngineMetric(
    "vllm:inter_token_latency_seconds", "histogram", "Time between consecutive tokens of a request."
)
ENGINE_QUEUE_TIME = EngineMetric(
    "vllm:request_queue_time_seconds", "histogram", "Time a request waited in vLLM's queue."
)
ENGINE_LATENCY = EngineMetric(
    "vllm:e2e_request_latency_seconds", "histogram", "Time from arrival in vLLM to the last token."
)
ENGINE_RUNNING = EngineMetric("vllm:num_requests_running", "gauge", "Requests in vLLM's running batch.")
ENGINE_QUEUE = EngineMetric("vllm:num_requests_waiting", "gauge", "Requests queued in vLLM, waiting for KV-cache room.")
KV_CACHE_USAGE = EngineMetric("vllm:kv_cache_usage_perc", "gauge", "Share of vLLM's KV-cache blocks in use (0 to 1).")
PREEMPTIONS = EngineMetric("vllm:num_preemptions", "counter", "Running requests vLLM evicted to free KV cache.")
ENGINE_METRICS = (
    ENGINE_TTFT,
    ENGINE_ITL,
    ENGINE_QUEUE_TIME,
    ENGINE_LATENCY,
    ENGINE_RUNNING,
    ENGINE_QUEUE,
    KV_CACHE_USAGE,
    PREEMPTIONS,
)

# --- residency -----------------------------------------------------------------------------------

PII_DETECTIONS = Counter(
    f"{PREFIX}_pii_detections",
    "Identifiers found in requests by the residency guard, by identifier type (never the values).",
    ["type"],
    registry=REGISTRY,
)
RESIDENCY_DECISIONS = Counter(
    f"{PREFIX}_residency_decisions",
    "Residency decisions on requests, by action (allow, redact, block) and the policy rule behind it.",
    ["action", "rule"],
    registry=REGISTRY,
)
EGRESS_BLOCKED = Counter(
    f"{PREFIX}_egress_blocked",
    "Requests refused because their data may not go where the model runs (egress or in-country-only rules).",
    ["rule"],
    registry=REGISTRY,
)

# --- access --------------------------------------------------------------------------------------

AUTH_FAILURES = Counter(
    f"{PREFIX}_auth_failures",
    "Failed authentications at the gateway, by reason (malformed_credential, bad_key, revoked_key, bad_oidc_token).",
    ["reason"],
    registry=REGISTRY,
)
AUTH_LOCKOUTS = Counter(
    f"{PREFIX}_auth_lockouts",
    "Lockouts started after repeated failed authentications, by what was locked out (source or key).",
    ["scope"],
    registry=REGISTRY,
)
ACCESS_REFUSALS = Counter(
    f"{PREFIX}_access_refusals",
    "Authenticated requests refused, by tenant and reason (permission, site, model, data class, rate, quota).",
    ["tenant", "reason"],
    registry=REGISTRY,
)
TENANT_REQUESTS = Counter(
    f"{PREFIX}_tenant_requests",
    "Model requests admitted, by tenant.",
    ["tenant"],
    registry=REGISTRY,
)
TENANT_TOKENS = Counter(
    f"{PREFIX}_tenant_tokens",
    "Tokens metered against tenants' daily quotas, by tenant and direction (prompt or completion).",
    ["tenant", "direction"],
    registry=REGISTRY,
)

# --- registry ------------------------------------------------------------------------------------

PROMOTION_GATES = tuple(gate.value for gate in Gate)
REGISTRY_PROMOTIONS = Counter(
    f"{PREFIX}_registry_promotions",
    "Model promotions in the registry, by result (allowed, refused) and the gate that refused (`none` if allowed).",
    ["result", "gate"],
    registry=REGISTRY,
)

# --- Kubernetes operator -------------------------------------------------------------------------

MODEL_DEPLOYMENT_CONDITIONS = ("Ready", "PolicyCompliant", "ModelResolved")
CONDITION_STATUSES = ("True", "False", "Unknown")
RECONCILE_OUTCOMES = ("serving", "kept", "not_serving", "invalid")
OPERATOR_RECONCILIATIONS = Counter(
    f"{PREFIX}_operator_reconciliations",
    "ModelDeployment reconciliations by outcome: `serving` (objects applied), `kept` (left as they were: registry "
    "unreachable or alias not approved), `not_serving` (objects removed), `invalid` (spec refused).",
    ["outcome"],
    registry=REGISTRY,
)
MODEL_DEPLOYMENT_CONDITION = Gauge(
    f"{PREFIX}_model_deployment_condition",
    "1 for the status (True, False, Unknown) each ModelDeployment condition has now, 0 for the others; the "
    "series go when the deployment is deleted.",
    ["namespace", "name", "condition", "status"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
ADMISSION_REVIEWS = Counter(
    f"{PREFIX}_admission_reviews",
    "Admission reviews the operator's webhook answered, by kind and result (admitted, rejected).",
    ["kind", "result"],
    registry=REGISTRY,
)


AuthFailureReason = Literal["malformed_credential", "bad_key", "revoked_key", "bad_oidc_token"]
AUTH_FAILURE_REASONS: tuple[str, ...] = get_args(AuthFailureReason)
LOCKOUT_SCOPES = ("source", "key")


def initialise_series(egress_rules: Sequence[str] = ()) -> None:
    """Create the label sets known up front at zero, so `rate()` and alerts see the first event as a change."""
    for mode in MODES:
        for metric in (PROMPT_TOKENS, GENERATION_TOKENS):
            metric.labels(mode)
    for reason in AUTH_FAILURE_REASONS:
        AUTH_FAILURES.labels(reason)
    for scope in LOCKOUT_SCOPES:
        AUTH_LOCKOUTS.labels(scope)
    for rule in egress_rules:
        EGRESS_BLOCKED.labels(rule)
    REGISTRY_PROMOTIONS.labels("allowed", "none")
    for outcome in RECONCILE_OUTCOMES:
        OPERATOR_RECONCILIATIONS.labels(outcome)
    for kind in ("ModelDeployment", "ResidencyPolicy"):
        for result in ("admitted", "rejected"):
            ADMISSION_REVIEWS.labels(kind, result)
    for gate in PROMOTION_GATES:
        REGISTRY_PROMOTIONS.labels("refused", gate)


def exposition() -> bytes:
    """The `/metrics` body: every process's samples when they share a directory, else this process's."""
    if SHARED_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=SHARED_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


_SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def metric_names() -> dict[str, str]:
    """Every sample name the catalogue can expose (with `_total`, `_bucket`, ...), mapped to its metric type."""
    names: dict[str, str] = {}
    described = [(metric.name, metric.type) for metric in REGISTRY.collect()]
    for name, kind in described + [(metric.name, metric.type) for metric in ENGINE_METRICS]:
        for suffix in _SAMPLE_SUFFIXES.get(kind, ("",)):
            names[name + suffix] = kind
    return names
