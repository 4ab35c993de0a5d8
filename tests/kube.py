"""Validation of Kubernetes objects for the tests: built-in kinds with kubernetes-validate, custom
resources against their CRD's OpenAPI schema (the shared upstream CRDs, or our generated ones).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from policies import ResidencyPolicy, parse_policy
from policies.loader import default_policy_path

SHARED_CRDS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "crds"
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def validate_builtin(obj: dict[str, Any]) -> None:
    """Strict schema validation for Kubernetes 1.30 and the newest version kubernetes-validate ships."""
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def _json_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3.0 schema as JSON Schema 2020-12: `x-kubernetes-*` dropped, `nullable` as a null
    type (and value), boolean `exclusiveMinimum`/`exclusiveMaximum` as numbers, Go's mid-pattern flags
    (`^(?i)`) in front."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if "properties" in node:
        schema["properties"] = {name: _json_schema(child) for name, child in node["properties"].items()}
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if schema.get(exclusive) is True:
            schema[exclusive] = schema.pop(bound)
        elif schema.get(exclusive) is False:
            del schema[exclusive]
    if isinstance(schema.get("pattern"), str):
        schema["pattern"] = schema["pattern"].replace("^(?i)", "(?i)^")
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    return schema


def crd_version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    served = next(entry for entry in crd["spec"]["versions"] if entry["name"] == version)
    return _json_schema(served["schema"]["openAPIV3Schema"])


def shared_crd(file_name: str) -> dict[str, Any]:
    """An upstream CRD from ../shared/schemas/crds; the test is skipped, saying why, where that folder is absent."""
    path = SHARED_CRDS / file_name
    if not path.is_file():
        pytest.skip(f"upstream CRD schemas not available: {path} is absent (they live beside the checkout)")
    # libyaml where PyYAML has it: the KubeRay CRDs are 1 MB.
    return yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


SHARED_CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}


@functools.cache
def _shared_schema(kind: str, version: str) -> tuple[str, dict[str, Any]]:
    """A shared CRD's group and one version's JSON Schema, converted once: KubeRay's CRDs are 1 MB of YAML."""
    crd = shared_crd(SHARED_CRD_FILES[kind])
    return crd["spec"]["group"], crd_version_schema(crd, version)


def validate_custom(obj: dict[str, Any], crd: dict[str, Any] | None = None) -> None:
    """Validate a custom resource against `crd`, or the shared upstream CRD of its kind."""
    group, _, version = obj["apiVersion"].rpartition("/")
    served, schema = (
        (crd["spec"]["group"], crd_version_schema(crd, version)) if crd else _shared_schema(obj["kind"], version)
    )
    assert served == group, f"{obj['kind']} is {group}, the CRD serves {served}"
    jsonschema.validate(obj, schema)


def policy_with_a_foreign_site() -> ResidencyPolicy:
    """The default policy plus `us-east-1`, a site outside the jurisdiction."""
    text = default_policy_path().read_text(encoding="utf-8")
    foreign = (
        "    - name: us-east-1\n      kind: cloud-region\n      country: US\n      region: us-east-1\n"
        "      zones: [{name: us-east-1a}]\n\n  dataClasses:"
    )
    return parse_policy(text.replace("  dataClasses:", foreign, 1))
