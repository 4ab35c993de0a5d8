"""Alert and recording rules, with the promtool unit tests that prove each alert fires and stays quiet.

One definition per alert: its rule, its runbook and its test cases. `python -m monitoring.alerts`
writes `monitoring/rules/sovereign.rules.yaml` and `monitoring/rules/tests/sovereign.test.yaml`;
a test checks the written files match, so they never drift from this module.

SLOs follow the SRE workbook's multiwindow, multi-burn-rate alerts: a page when the error budget
burns 14.4x too fast over 1 h (confirmed over 5 min) or 6x over 6 h (30 min); a ticket for 3x over
1 d (2 h) or 1x over 3 d (6 h).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).parent / "rules"
RULES_FILE = RULES_DIR / "sovereign.rules.yaml"
TESTS_FILE = RULES_DIR / "tests" / "sovereign.test.yaml"
RUNBOOK_BASE = "https://github.com/sovereign-stack/sovereign-stack/blob/main/docs/runbooks"

# Availability: 99.9% of inference requests answer without a 5xx. Latency: 99% get a first token within 2 s.
AVAILABILITY_OBJECTIVE = 0.999
TTFT_OBJECTIVE = 0.99
TTFT_THRESHOLD = "2.0"  # a bucket bound of sovereign_time_to_first_token_seconds
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
INFERENCE_ROUTES = 'route=~"/v1/(chat/)?completions"'


def recording_rules() -> list[dict[str, str]]:
    rules = []
    for window in WINDOWS:
        rules.append(
            {
                "record": f"sovereign:availability_errors:ratio_rate{window}",
                # `or vector(0)`: with no 5xx series at all the ratio is 0, not absent.
                "expr": f'(sum(rate(sovereign_gateway_requests_total{{{INFERENCE_ROUTES},status=~"5.."}}[{window}]))'
                " or vector(0))\n"
                f"/\nsum(rate(sovereign_gateway_requests_total{{{INFERENCE_ROUTES}}}[{window}]))",
            }
        )
        rules.append(
            {
                "record": f"sovereign:ttft_slow:ratio_rate{window}",
                "expr": "1 - (\n"
                f'  sum(rate(sovereign_time_to_first_token_seconds_bucket{{le="{TTFT_THRESHOLD}"}}[{window}]))\n'
                f"  /\n  sum(rate(sovereign_time_to_first_token_seconds_count[{window}]))\n)",
            }
        )
    return rules


def _burn(ratio: str, objective: float, pairs: list[tuple[str, str, float]]) -> str:
    budget = round(1 - objective, 6)
    clauses = [
        f"(\n  {ratio}{long} > ({factor} * {budget})\n  and\n  {ratio}{short} > ({factor} * {budget})\n)"
        for long, short, factor in pairs
    ]
    return "\nor\n".join(clauses)


FAST = [("1h", "5m", 14.4), ("6h", "30m", 6)]
SLOW = [("1d", "2h", 3), ("3d", "6h", 1)]


@dataclass(frozen=True)
class Case:
    """One promtool test: input series (`series: values`) and, at `at`, the alerts expected firing."""

    series: dict[str, str]
    at: str
    firing: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    runbook: str
    cases: list[Case]
    hold: str = "0m"
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.hold,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{RUNBOOK_BASE}/{self.runbook}.md",
            },
        }


CHAT = 'sovereign_gateway_requests_total{route="/v1/chat/completions",status="%s",tenant="acme"}'
TTFT_BUCKET = 'sovereign_time_to_first_token_seconds_bucket{le="%s",mode="non_think"}'
TTFT_COUNT = 'sovereign_time_to_first_token_seconds_count{mode="non_think"}'


def _traffic(ok_per_min: str, errors_per_min: str, minutes: int) -> dict[str, str]:
    return {CHAT % "200": f"0+{ok_per_min}x{minutes}", CHAT % "503": f"0+{errors_per_min}x{minutes}"}


def _first_tokens(fast_per_min: str, total_per_min: str, minutes: int) -> dict[str, str]:
    return {TTFT_BUCKET % TTFT_THRESHOLD: f"0+{fast_per_min}x{minutes}", TTFT_COUNT: f"0+{total_per_min}x{minutes}"}


ALERTS = [
    Alert(
        "SovereignAvailabilityBudgetBurnFast",
        _burn("sovereign:availability_errors:ratio_rate", AVAILABILITY_OBJECTIVE, FAST),
        "page",
        "Inference availability is burning its error budget fast",
        "More than 14.4x (1 h) or 6x (6 h) the error rate the 99.9% availability SLO allows is answered with 5xx.",
        "availability-budget-burn",
        [
            Case(_traffic("60", "2", 200), "70m", [{"slo": "availability"}]),  # 3.2% errors
            Case(_traffic("60", "0.03", 200), "70m"),  # 0.05%: within budget
            Case({CHAT % "200": "0+60x200"}, "70m"),  # no 5xx series at all
        ],
        hold="2m",
        labels={"slo": "availability"},
    ),
    Alert(
        "SovereignAvailabilityBudgetBurnSlow",
        _burn("sovereign:availability_errors:ratio_rate", AVAILABILITY_OBJECTIVE, SLOW),
        "ticket",
        "Inference availability is eating its error budget",
        "More than 3x (1 d) or 1x (3 d) the error rate the 99.9% availability SLO allows is answered with 5xx.",
        "availability-budget-burn",
        [
            Case(_traffic("60", "0.3", 300), "200m", [{"slo": "availability"}]),  # 0.5%: slow, not fast
            Case(_traffic("60", "0.03", 300), "200m"),
        ],
        hold="1h",
        labels={"slo": "availability"},
    ),
    Alert(
        "SovereignTTFTBudgetBurnFast",
        _burn("sovereign:ttft_slow:ratio_rate", TTFT_OBJECTIVE, FAST),
        "page",
        "Time to first token is burning its SLO budget fast",
        "More than 14.4x (1 h) or 6x (6 h) the share of slow first tokens (over 2 s) that the 99% SLO allows.",
        "ttft-budget-burn",
        [
            Case(_first_tokens("40", "60", 200), "70m", [{"slo": "ttft"}]),  # a third are slow
            Case(_first_tokens("59.97", "60", 200), "70m"),  # 0.05% slow
        ],
        hold="2m",
        labels={"slo": "ttft"},
    ),
    Alert(
        "SovereignTTFTBudgetBurnSlow",
        _burn("sovereign:ttft_slow:ratio_rate", TTFT_OBJECTIVE, SLOW),
        "ticket",
        "Time to first token is eating its SLO budget",
        "More than 3x (1 d) or 1x (3 d) the share of slow first tokens (over 2 s) that the 99% SLO allows.",
        "ttft-budget-burn",
        [
            Case(_first_tokens("57", "60", 300), "200m", [{"slo": "ttft"}]),  # 5% slow
            Case(_first_tokens("59.97", "60", 300), "200m"),
        ],
        hold="1h",
        labels={"slo": "ttft"},
    ),
    Alert(
        "SovereignEgressBlocked",
        "sum by (rule) (increase(sovereign_egress_blocked_total[5m])) > 0",
        "page",
        "Data was stopped from leaving its allowed destinations",
        "Requests were refused under {{ $labels.rule }}: their data may not go where they were sent.",
        "egress-blocked",
        [
            Case(
                {'sovereign_egress_blocked_total{rule="spec.dataClasses.personal.inCountryOnly"}': "0 0 1 1 1"},
                "3m",
                [{"rule": "spec.dataClasses.personal.inCountryOnly"}],
            ),
            Case({'sovereign_egress_blocked_total{rule="spec.dataClasses.personal.inCountryOnly"}': "0 0 0 0 0"}, "3m"),
        ],
    ),
    Alert(
        "SovereignAuthFailureSpike",
        "sum(rate(sovereign_auth_failures_total[5m])) > 1",
        "page",
        "Many failed authentications at the gateway",
        "More than one failed authentication per second over 5 minutes: keys may be being guessed or leaked.",
        "auth-failure-spike",
        [
            Case({'sovereign_auth_failures_total{reason="bad_key"}': "0+120x15"}, "10m", [{}]),
            Case({'sovereign_auth_failures_total{reason="bad_key"}': "0+6x15"}, "10m"),
        ],
        hold="2m",
    ),
    Alert(
        "SovereignLockout",
        "sum by (scope) (increase(sovereign_auth_lockouts_total[10m])) > 0",
        "ticket",
        "A source or an API key was locked out",
        "Repeated failed authentications locked out a {{ $labels.scope }}; the audit log names it.",
        "lockout",
        [
            Case({'sovereign_auth_lockouts_total{scope="source"}': "0 0 1 1 1"}, "3m", [{"scope": "source"}]),
            Case({'sovereign_auth_lockouts_total{scope="source"}': "0 0 0 0 0"}, "3m"),
        ],
    ),
    Alert(
        "SovereignKVCacheSaturated",
        "max(vllm:kv_cache_usage_perc) > 0.9",
        "ticket",
        "The KV cache is nearly full",
        "More than 90% of vLLM's KV cache has been in use for 5 minutes: new requests queue; add replicas.",
        "kv-cache-saturated",
        [
            Case({"vllm:kv_cache_usage_perc": "0.95+0x10"}, "8m", [{}]),
            Case({"vllm:kv_cache_usage_perc": "0.5+0x10"}, "8m"),
        ],
        hold="5m",
    ),
    Alert(
        "SovereignEnginePreempting",
        "sum(rate(vllm:num_preemptions_total[5m])) > 0.1",
        "ticket",
        "vLLM keeps preempting requests",
        "vLLM has evicted running requests for KV-cache room for 10 minutes (over 0.1 per second): the work is "
        "recomputed, so latency and cost grow; add replicas or lower the context limit.",
        "engine-preempting",
        [
            Case({"vllm:num_preemptions_total": "0+60x20"}, "15m", [{}]),
            Case({"vllm:num_preemptions_total": "0+1x20"}, "15m"),
        ],
        hold="10m",
    ),
    Alert(
        "SovereignPromotionRefused",
        'sum by (gate) (increase(sovereign_registry_promotions_total{result="refused"}[10m])) > 0',
        "ticket",
        "A model promotion was refused",
        "Promotion was refused by the {{ $labels.gate }} gate: someone tried to serve an unapproved model.",
        "promotion-refused",
        [
            Case(
                {'sovereign_registry_promotions_total{result="refused",gate="four_eyes"}': "0 0 1 1 1"},
                "3m",
                [{"gate": "four_eyes"}],
            ),
            Case({'sovereign_registry_promotions_total{result="allowed",gate="none"}': "0 0 1 1 1"}, "3m"),
        ],
    ),
    Alert(
        "SovereignModelDeploymentNotCompliant",
        'max by (namespace, name, condition) (sovereign_model_deployment_condition{condition=~"PolicyCompliant|'
        'ModelResolved",status="False"}) == 1',
        "ticket",
        "A ModelDeployment breaks the residency policy or its alias is not approved",
        "{{ $labels.namespace }}/{{ $labels.name }}: {{ $labels.condition }} is False, so its new version is not "
        "served; `kubectl describe modeldeployment` says why.",
        "model-deployment-not-compliant",
        [
            Case(
                {
                    'sovereign_model_deployment_condition{namespace="models",name="axk1",condition="ModelResolved",'
                    'status="False"}': "0 1 1 1"
                },
                "2m",
                [{"namespace": "models", "name": "axk1", "condition": "ModelResolved"}],
            ),
            Case(
                {
                    'sovereign_model_deployment_condition{namespace="models",name="axk1",condition="PolicyCompliant",'
                    'status="False"}': "0 0 0 0"
                },
                "2m",
            ),
        ],
    ),
    Alert(
        "SovereignModelDeploymentNotReady",
        'max by (namespace, name) (sovereign_model_deployment_condition{condition="Ready",status!="True"}) == 1',
        "ticket",
        "A ModelDeployment has not been ready for 15 minutes",
        "{{ $labels.namespace }}/{{ $labels.name }} is not serving: its RayService is not ready or nothing may run.",
        "model-deployment-not-ready",
        [
            Case(
                {
                    'sovereign_model_deployment_condition{namespace="models",name="axk1",condition="Ready",'
                    'status="False"}': "1x20"
                },
                "16m",
                [{"namespace": "models", "name": "axk1"}],
            ),
            Case(
                {
                    'sovereign_model_deployment_condition{namespace="models",name="axk1",condition="Ready",'
                    'status="False"}': "1x10 0x10"
                },
                "16m",
            ),
        ],
        hold="15m",
    ),
]


def _expand(text: str, labels: dict[str, str]) -> str:
    """The annotation as Prometheus renders it for these labels (a missing label renders empty)."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda match: labels.get(match.group(1), ""), text)


def rules_document() -> dict[str, Any]:
    return {
        "groups": [
            {"name": "sovereign-slo-recording", "rules": recording_rules()},
            {"name": "sovereign-alerts", "rules": [alert.rule() for alert in ALERTS]},
        ]
    }


def tests_document() -> dict[str, Any]:
    tests = []
    for alert in ALERTS:
        for case in alert.cases:
            expected = [
                {
                    "exp_labels": {"severity": alert.severity, **alert.labels, **firing},
                    "exp_annotations": {
                        "summary": alert.summary,
                        "description": _expand(alert.description, firing),
                        "runbook_url": f"{RUNBOOK_BASE}/{alert.runbook}.md",
                    },
                }
                for firing in case.firing
            ]
            tests.append(
                {
                    "interval": "1m",
                    "input_series": [{"series": series, "values": values} for series, values in case.series.items()],
                    "alert_rule_test": [{"eval_time": case.at, "alertname": alert.name, "exp_alerts": expected}],
                }
            )
    return {"rule_files": [f"../{RULES_FILE.name}"], "evaluation_interval": "1m", "tests": tests}


class _Dumper(yaml.SafeDumper):
    """Multi-line PromQL as literal blocks, so the rules file reads like hand-written rules."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def render(document: dict[str, Any]) -> str:
    header = "# Generated by `python -m monitoring.alerts` from monitoring/alerts.py; do not edit.\n"
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def main() -> None:
    argparse.ArgumentParser(description="Write the alert rules and their promtool tests.").parse_args()
    TESTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RULES_FILE.write_text(render(rules_document()))
    TESTS_FILE.write_text(render(tests_document()))
    print(f"wrote {RULES_FILE} and {TESTS_FILE}")


if __name__ == "__main__":
    main()
