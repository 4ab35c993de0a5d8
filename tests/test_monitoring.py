"""The metric catalogue, the alert rules with their promtool tests, and the dashboards, checked statically."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from monitoring import alerts, catalogue, dashboards

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_LABELS = {
    "route", "status", "tenant", "mode", "layer", "expert", "shard", "type", "action", "rule", "reason", "scope",
    "direction", "result", "gate",
    # Kubernetes objects (a ModelDeployment's namespace and name, its conditions), never people.
    "namespace", "name", "condition", "outcome", "kind",
}  # fmt: skip
PROMQL_NAME = re.compile(r"\b(sovereign[_:][a-z0-9_:]+)")


def families() -> list:
    return list(catalogue.REGISTRY.collect())


def test_catalogue_follows_prometheus_naming() -> None:
    for family in families():
        assert family.name.startswith("sovereign_"), family.name
        assert family.documentation, f"{family.name} has no help text"
        if family.type == "histogram":
            # Time in seconds, or a count of sequences per batching step.
            assert family.name.endswith(("_seconds", "_sequences")), f"{family.name}: not a base unit"
        if family.type == "gauge":
            # `_condition`: a state set, one series per status and 1 on the current one (kube-state-metrics style).
            assert family.name.endswith(("_ratio", "_running", "_waiting", "_up", "_condition")), family.name
        assert not family.name.endswith("_total"), "prometheus-client adds `_total` to counters itself"
    names = catalogue.metric_names()
    assert all(name.endswith("_total") for name, kind in names.items() if kind == "counter" and "_created" not in name)


def declared_labels() -> dict[str, list[str]]:
    """Each metric's label names, read from the catalogue's source: its constructor's `labelnames` (none if absent)."""
    tree = ast.parse(Path(catalogue.__file__).read_text(encoding="utf-8"))
    labels = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"Counter", "Gauge", "Histogram"}:
            keyword = [k.value for k in node.keywords if k.arg == "labelnames"]
            argument = node.args[2] if len(node.args) > 2 else next(iter(keyword), None)
            labels[ast.unparse(node.args[0])] = ast.literal_eval(argument) if argument else []
    return labels


def test_labels_carry_no_identity_but_the_tenant() -> None:
    labels = declared_labels()
    assert len(labels) == sum(isinstance(m, MetricWrapperBase) for m in vars(catalogue).values())
    for name, names in labels.items():
        assert set(names) <= ALLOWED_LABELS, (name, names)


def test_generated_rules_and_dashboards_are_up_to_date() -> None:
    assert alerts.RULES_FILE.read_text() == alerts.render(alerts.rules_document()), "run python -m monitoring.alerts"
    assert alerts.TESTS_FILE.read_text() == alerts.render(alerts.tests_document()), "run python -m monitoring.alerts"
    for dashboard in dashboards.DASHBOARDS:
        written = json.loads((dashboards.DASHBOARDS_DIR / f"{dashboard.uid}.json").read_text())
        assert written == dashboards.dashboard_json(dashboard), "run python -m monitoring.dashboards"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package (SYSTEM_PACKAGES)")
    return path


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(alerts.RULES_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts.recording_rules()) + len(alerts.ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_fire_and_stay_quiet(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", alerts.TESTS_FILE.name],
        capture_output=True,
        text=True,
        cwd=alerts.TESTS_FILE.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cases = {alert.name: [bool(case.firing) for case in alert.cases] for alert in alerts.ALERTS}
    assert all(True in outcomes and False in outcomes for outcomes in cases.values()), cases


def test_a_broken_rule_fails_its_promtool_test(promtool: str, tmp_path: Path) -> None:
    rules = alerts.rules_document()
    lockout = next(rule for rule in rules["groups"][1]["rules"] if rule["alert"] == "SovereignLockout")
    lockout["expr"] = lockout["expr"].replace("> 0", "> 5")
    (tmp_path / alerts.RULES_FILE.name).write_text(alerts.render(rules))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yaml").write_text(alerts.render(alerts.tests_document()))
    result = subprocess.run(
        [promtool, "test", "rules", "t.yaml"], capture_output=True, text=True, cwd=tmp_path / "tests"
    )
    assert result.returncode != 0
    assert "SovereignLockout" in result.stdout + result.stderr


def promql_names(text: str) -> set[str]:
    return {name for name in PROMQL_NAME.findall(text) if ":" not in name}


def test_every_metric_in_rules_tests_and_panels_is_in_the_catalogue() -> None:
    known = set(catalogue.metric_names())
    used = promql_names(alerts.RULES_FILE.read_text()) | promql_names(alerts.TESTS_FILE.read_text())
    for dashboard in dashboards.DASHBOARDS:
        used |= promql_names(json.dumps(dashboards.dashboard_json(dashboard)))
    assert used, "found no metric names at all"
    assert used <= known, f"not in the catalogue: {sorted(used - known)}"
    recorded = {rule["record"] for rule in alerts.recording_rules()}
    used_recordings = {n for n in PROMQL_NAME.findall(alerts.RULES_FILE.read_text()) if ":" in n}
    assert used_recordings <= recorded


def test_every_alert_is_labelled_annotated_and_has_a_runbook() -> None:
    document = yaml.safe_load(alerts.RULES_FILE.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]
    assert {rule["alert"] for rule in rules} == {alert.name for alert in alerts.ALERTS}
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        runbook = rule["annotations"]["runbook_url"].removeprefix(alerts.RUNBOOK_BASE + "/")
        assert (ROOT / "docs" / "runbooks" / runbook).is_file(), f"{rule['alert']}: no runbook {runbook}"


def test_dashboards_have_datasource_and_tenant_variables() -> None:
    titles = set()
    for dashboard in dashboards.DASHBOARDS:
        document = dashboards.dashboard_json(dashboard)
        variables = {variable["name"]: variable for variable in document["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert all(panel["datasource"]["uid"] == "${datasource}" for panel in document["panels"])
        queries = [target["expr"] for panel in document["panels"] for target in panel["targets"]]
        # A tenant picker (with "All") wherever a query filters by tenant; vLLM's own metrics carry no tenant.
        if any("$tenant" in query for query in queries):
            assert variables["tenant"]["includeAll"], document["title"]
        titles.add(document["title"])
    assert titles == {"Serving overview", "Engine", "Residency & security", "Registry & lifecycle"}


def test_every_metric_and_alert_is_documented() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    for family in families():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in text or family.name.startswith("sovereign_expert_"), (
            f"{name} is not in docs/monitoring.md"
        )
    assert all(f"`{alert.name}`" in text for alert in alerts.ALERTS)


def test_a_prometheus_left_by_a_killed_stack_is_stopped_at_the_next_start(tmp_path: Path) -> None:
    from monitoring import prometheus
    from serving.launcher import free_port

    config = prometheus.write_config(tmp_path, "127.0.0.1:1", "sk-sov-unused", "15s")
    first = prometheus.start(config, free_port(), tmp_path)
    second = prometheus.start(config, free_port(), tmp_path)  # as after `kill -9` of `sovereign up`
    try:
        assert first.process.wait(timeout=10) == 0, "the stale server was shut down cleanly"
        assert second.process.poll() is None
    finally:
        second.stop()
        first.stop()
