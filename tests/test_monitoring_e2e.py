"""Every panel of every dashboard against a real Prometheus scraping the live embedded stack."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from monitoring import catalogue, dashboards
from monitoring import prometheus as local_prometheus

MODEL = "axk1-tiny"


@pytest.fixture(scope="module")
def prometheus(
    stack: object,
    make_key: Callable[..., str],
    allocate_port: Callable[[], int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Debian's Prometheus on a random loopback port, scraping the stack every second with the alert rules."""
    directory = tmp_path_factory.mktemp("prometheus")
    target = stack.base_url.removeprefix("http://")
    config = local_prometheus.write_config(directory, target, make_key("platform", "monitoring"), "1s")
    server = local_prometheus.start(config, allocate_port(), directory)
    yield server.url
    server.stop()


def drive_traffic(stack: object, client: openai.OpenAI, make_key: Callable[..., str]) -> None:
    """Normal requests in both modes, a blocked and a redacted request, failed and refused authentications."""
    for thinking in (True, False):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "안녕하세요"}], max_tokens=6,
            extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
        )  # fmt: skip
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "전화 010-1234-5678"}], max_tokens=2
    )
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "주민번호 900101-1234568"}], max_tokens=2
        )
    transport = httpx.HTTPTransport(local_address="127.0.5.1")
    with httpx.Client(base_url=stack.base_url, transport=transport) as session:
        assert session.get("/v1/models", headers={"Authorization": "Bearer sk-sov-wrong"}).status_code == 401
        assert session.post("/v1/chat/completions", json={}).status_code == 401
        auditor = {"Authorization": f"Bearer {make_key('acme', 'auditor')}"}
        assert session.post("/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=auditor).status_code == 403


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, f"{promql}: {response.text}"
    return response.json()["data"]["result"]


def concrete(promql: str) -> str:
    """A panel query as Grafana sends it with every variable at `All`."""
    return promql.replace("$__rate_interval", "1m").replace("$tenant", ".*").replace("$layer", ".*")


def dead_panels(prometheus: str, document: dict[str, Any]) -> list[str]:
    """Panels whose query returns no series: a dashboard bug nobody sees until an incident."""
    return [
        f"{document['title']} / {title}: {expr}"
        for title, expr in dashboards.panel_queries(document)
        if not query(prometheus, concrete(expr))
    ]


@pytest.fixture(scope="module")
def scraped(prometheus: str, stack: object, client: openai.OpenAI, make_key: Callable[..., str]) -> str:
    drive_traffic(stack, client, make_key)
    # Rates need two scrapes after the traffic, and the recording rules one evaluation after that.
    deadline = time.monotonic() + 60
    ready = 'count_over_time(sovereign_auth_failures_total{reason="malformed_credential"}[1m]) >= 3'
    while not query(prometheus, ready) or not query(prometheus, "sovereign:availability_errors:ratio_rate5m"):
        assert time.monotonic() < deadline, "Prometheus has not scraped the stack"
        time.sleep(0.5)
    return prometheus


def test_prometheus_scrapes_every_replica_through_the_gateway(scraped: str) -> None:
    jobs = query(scraped, 'up{job="sovereign-gateway"}')
    assert [sample["value"][1] for sample in jobs] == ["1"]
    # Recorded by the model server's process, exposed by the gateway's: one target, every replica.
    assert query(scraped, 'sovereign_generation_tokens_total{mode="think"} > 0')
    # vLLM's own metrics, recorded inside the model server's engine, through the same single target.
    for metric in catalogue.ENGINE_METRICS:
        suffix = {"counter": "_total", "histogram": "_count"}.get(metric.type, "")
        assert query(scraped, metric.name + suffix), f"{metric.name} is not exported by vLLM"
    assert query(scraped, "sum(vllm:generation_tokens_total) > 0")
    assert query(scraped, 'sovereign_gateway_requests_total{route="/v1/chat/completions",status="403"}')
    # Refused before routing, still counted under its route: an auth outage must burn the availability budget.
    assert query(scraped, 'sovereign_gateway_requests_total{route="/v1/chat/completions",status="401",tenant="none"}')
    assert query(scraped, 'sovereign_residency_decisions_total{action="redact"} > 0')
    assert query(scraped, 'sovereign_pii_detections_total{type="KR_RRN"} > 0')


@pytest.mark.parametrize("uid", [dashboard.uid for dashboard in dashboards.DASHBOARDS])
def test_every_panel_query_returns_a_series(scraped: str, uid: str) -> None:
    document = json.loads((dashboards.DASHBOARDS_DIR / f"{uid}.json").read_text())
    assert dead_panels(scraped, document) == []
    tenants = httpx.get(f"{scraped}/api/v1/label/tenant/values", timeout=10).json()["data"]
    assert "acme" in tenants, "the tenant variable has values to offer"


def test_a_dead_panel_is_caught(scraped: str, tmp_path: Path) -> None:
    document = copy.deepcopy(dashboards.dashboard_json(dashboards.SERVING))
    broken = copy.deepcopy(document["panels"][0])
    broken["title"] = "Typo in the metric name"
    broken["targets"][0]["expr"] = 'sum(rate(sovereign_gateway_request_total{tenant=~"$tenant"}[$__rate_interval]))'
    document["panels"].append(broken)
    (tmp_path / "broken.json").write_text(json.dumps(document))
    dead = dead_panels(scraped, json.loads((tmp_path / "broken.json").read_text()))
    assert dead == [f"Serving overview / Typo in the metric name: {broken['targets'][0]['expr']}"]


def test_alert_rules_are_loaded_and_healthy(scraped: str) -> None:
    groups = httpx.get(f"{scraped}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} >= {
        "SovereignEgressBlocked",
        "SovereignLockout",
    }
    assert all(rule["health"] in {"ok", "unknown"} for rule in rules), [r for r in rules if r["health"] == "err"]
