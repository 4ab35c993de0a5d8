"""Grafana dashboards, generated from the catalogue's metric names.

`python -m monitoring.dashboards` writes one JSON file per dashboard to `monitoring/dashboards/`;
a test checks the files match this module, and another runs every panel query against a live
Prometheus scraping the stack, so no panel is dead. The charts ship the files as ConfigMaps for the
Grafana sidecar. Every dashboard has a `datasource` variable and a `tenant` variable.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring import catalogue as c

DASHBOARDS_DIR = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
TENANT = 'tenant=~"$tenant"'


def _name(metric: Any, suffix: str = "") -> str:
    """The exposed name of a catalogue metric, e.g. `sovereign_auth_failures_total`."""
    return metric.describe()[0].name + suffix


def _quantiles(metric: Any, by: str, selector: str = "") -> list[tuple[str, str]]:
    bucket = _name(metric, "_bucket")
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({bucket}{{{selector}}}{RATE})))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.99)
    ]


def _engine_quantiles(metric: c.EngineMetric) -> list[tuple[str, str]]:
    """p50 and p99 of one of vLLM's histograms, over every replica."""
    bucket = f"{metric.name}_bucket"
    return [(f"histogram_quantile({q}, sum by (le) (rate({bucket}{RATE})))", f"p{int(q * 100)}") for q in (0.5, 0.99)]


@dataclass(frozen=True)
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    repeat: str | None = None


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    variables: list[dict[str, Any]] = field(default_factory=list)


def _query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }


TENANT_VARIABLE = _query_variable("tenant", "Tenant", f"label_values({_name(c.GATEWAY_REQUESTS, '_total')}, tenant)")

SERVING = Dashboard(
    "sovereign-serving",
    "Serving overview",
    "Is the model serving within its latency objectives? Requests, errors, latency, tokens and capacity.",
    [
        Panel(
            "Requests by status",
            [(f"sum by (status) (rate({_name(c.GATEWAY_REQUESTS, '_total')}{{{TENANT}}}{RATE}))", "{{status}}")],
            "reqps",
        ),
        Panel(
            "Inference error ratio (5xx, 5 min)",
            [("sovereign:availability_errors:ratio_rate5m", "5xx ratio")],
            "percentunit",
            description="The availability SLI; the SLO is 99.9% (recording rule from monitoring/rules).",
        ),
        Panel("Gateway latency by route", _quantiles(c.GATEWAY_LATENCY, "route"), "s"),
        Panel("Time to first token by mode", _quantiles(c.TIME_TO_FIRST_TOKEN, "mode"), "s"),
        Panel("Inter-token latency by mode", _quantiles(c.INTER_TOKEN_LATENCY, "mode"), "s"),
        Panel("Generation duration by mode", _quantiles(c.GENERATION_LATENCY, "mode"), "s"),
        Panel(
            "Tokens per second by mode",
            [
                (f"sum by (mode) (rate({_name(c.PROMPT_TOKENS, '_total')}{RATE}))", "prompt {{mode}}"),
                (f"sum by (mode) (rate({_name(c.GENERATION_TOKENS, '_total')}{RATE}))", "generated {{mode}}"),
            ],
        ),
        Panel(
            "Requests running and waiting",
            [(_name(c.REQUESTS_RUNNING), "running"), (_name(c.REQUESTS_WAITING), "waiting")],
        ),
        Panel("KV cache usage", [(f"max({c.KV_CACHE_USAGE.name})", "highest replica")], "percentunit"),
        Panel(
            "Tokens by tenant",
            [
                (
                    f"sum by (tenant, direction) (rate({_name(c.TENANT_TOKENS, '_total')}{{{TENANT}}}{RATE}))",
                    "{{tenant}} {{direction}}",
                )
            ],
        ),
    ],
    [TENANT_VARIABLE],
)

ENGINE = Dashboard(
    "sovereign-engine",
    "Engine",
    "Is vLLM keeping up? Its own view of latency, its queue, its KV cache and preemptions, every replica.",
    [
        Panel("Time to first token (vLLM)", _engine_quantiles(c.ENGINE_TTFT), "s"),
        Panel("Inter-token latency (vLLM)", _engine_quantiles(c.ENGINE_ITL), "s"),
        Panel("Queue time (vLLM)", _engine_quantiles(c.ENGINE_QUEUE_TIME), "s"),
        Panel(
            "Requests running and queued (vLLM)",
            [(f"sum({c.ENGINE_RUNNING.name})", "running"), (f"sum({c.ENGINE_QUEUE.name})", "queued")],
            description="A queue that stays above zero means the replicas are full: the autoscaler should add one.",
        ),
        Panel("KV cache usage (vLLM)", [(f"max({c.KV_CACHE_USAGE.name})", "highest replica")], "percentunit"),
        Panel(
            "Preemptions",
            [(f"sum(rate({c.PREEMPTIONS.name}_total{RATE}))", "preempted")],
            "ops",
            description="Running requests evicted for KV-cache room and recomputed later: wasted work.",
        ),
    ],
    [],
)

SECURITY = Dashboard(
    "sovereign-security",
    "Residency & security",
    "Is anyone trying to move sensitive data out, or to get in without authorisation?",
    [
        Panel(
            "Identifiers detected by type",
            [(f"sum by (type) (rate({_name(c.PII_DETECTIONS, '_total')}{RATE}))", "{{type}}")],
            "ops",
        ),
        Panel(
            "Residency decisions by action",
            [(f"sum by (action) (rate({_name(c.RESIDENCY_DECISIONS, '_total')}{RATE}))", "{{action}}")],
            "ops",
        ),
        Panel(
            "Blocked egress by rule",
            [(f"sum by (rule) (increase({_name(c.EGRESS_BLOCKED, '_total')}[1h]))", "{{rule}}")],
            description="Requests whose data may not go where they were sent; any is worth a look.",
        ),
        Panel(
            "Authentication failures by reason",
            [(f"sum by (reason) (rate({_name(c.AUTH_FAILURES, '_total')}{RATE}))", "{{reason}}")],
            "ops",
        ),
        Panel(
            "Lockouts",
            [(f"sum by (scope) (increase({_name(c.AUTH_LOCKOUTS, '_total')}[1h]))", "{{scope}}")],
        ),
        Panel(
            "Refusals by tenant and reason",
            [
                (
                    f"sum by (tenant, reason) (rate({_name(c.ACCESS_REFUSALS, '_total')}{{{TENANT}}}{RATE}))",
                    "{{tenant}} {{reason}}",
                )
            ],
            "ops",
        ),
        Panel(
            "Admitted requests by tenant",
            [(f"sum by (tenant) (rate({_name(c.TENANT_REQUESTS, '_total')}{{{TENANT}}}{RATE}))", "{{tenant}}")],
            "reqps",
        ),
    ],
    [TENANT_VARIABLE],
)

REGISTRY = Dashboard(
    "sovereign-registry",
    "Registry & lifecycle",
    "Did anything unapproved get promoted? Promotions allowed and refused, by gate.",
    [
        Panel(
            "Promotions by result",
            [(f"sum by (result) (increase({_name(c.REGISTRY_PROMOTIONS, '_total')}[1d]))", "{{result}}")],
        ),
        Panel(
            "Refused promotions by gate",
            [
                (
                    f'sum by (gate) (increase({_name(c.REGISTRY_PROMOTIONS, "_total")}{{result="refused"}}[1d]))',
                    "{{gate}}",
                )
            ],
            description="Any refusal means someone tried to serve a model that did not pass its gates.",
        ),
        Panel(
            "ModelDeployments not ready or not compliant",
            [
                (
                    f'count by (condition) ({_name(c.MODEL_DEPLOYMENT_CONDITION)}{{status!="True"}} == 1) or vector(0)',
                    "{{condition}} not True",
                )
            ],
            description="Deployments on Kubernetes whose condition is False or Unknown (`kubectl get mdep -A`).",
        ),
        Panel(
            "Admission reviews rejected",
            [
                (
                    f'sum by (kind) (increase({_name(c.ADMISSION_REVIEWS, "_total")}{{result="rejected"}}[1d]))',
                    "{{kind}}",
                )
            ],
            description="Objects the operator's webhook refused: unapproved aliases, foreign sites, GPUs off plan.",
        ),
    ],
    [TENANT_VARIABLE],
)

DASHBOARDS = [SERVING, ENGINE, SECURITY, REGISTRY]


def _panel_json(panel: Panel, number: int) -> dict[str, Any]:
    width = 24 if panel.repeat else 12
    body: dict[str, Any] = {
        "id": number,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width, "x": 0 if panel.repeat else (number - 1) % 2 * 12, "y": (number - 1) // 2 * 8},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + index), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for index, (expr, legend) in enumerate(panel.queries)
        ],
    }
    if panel.kind == "heatmap":
        body["options"] = {"calculate": False, "yAxis": {"unit": "short"}, "color": {"scheme": "Oranges"}}
    if panel.repeat:
        body.update(repeat=panel.repeat, repeatDirection="v")
    return body


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    datasource = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"}
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["sovereign-stack"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [datasource, *dashboard.variables]},
        "panels": [_panel_json(panel, number) for number, panel in enumerate(dashboard.panels, start=1)],
    }


def panel_queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of a dashboard document."""
    return [(panel["title"], target["expr"]) for panel in document["panels"] for target in panel["targets"]]


def main() -> None:
    argparse.ArgumentParser(description="Write the Grafana dashboards as JSON.").parse_args()
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for dashboard in DASHBOARDS:
        path = DASHBOARDS_DIR / f"{dashboard.uid}.json"
        path.write_text(json.dumps(dashboard_json(dashboard), indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
