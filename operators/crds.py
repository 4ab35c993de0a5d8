"""CustomResourceDefinitions generated from the pydantic models, and JSON Schema made structural.

Kubernetes accepts only a *structural* subset of OpenAPI v3 in a CRD: no `$ref`, no `anyOf` for
optional fields (`nullable` instead), no `const`, no `additionalProperties: false`, boolean
`exclusiveMinimum`. `structural_schema` turns pydantic's JSON Schema into that subset; the same
function makes `values.schema.json` for the Helm chart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from operators.resources import GROUP, VERSION, ModelDeploymentSpec, ModelDeploymentStatus, ResidencyPolicyStatus
from policies.model import PolicySpec

# Keys Kubernetes rejects or ignores in a CRD schema; the webhook still enforces what they said.
_DROPPED_KEYS = {"title", "examples", "uniqueItems", "propertyNames", "$defs", "discriminator"}
# Formats the API server validates; any other (`cidr`, ...) is dropped rather than silently ignored.
_KUBERNETES_FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "password", "uri", "email"}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation schema, by alias, with every `$ref` inlined and only structural keywords."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(schema, schema.get("$defs", {}))


def _structural(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    variants = node.pop("anyOf", None)
    if variants is not None:
        present = [variant for variant in variants if variant.get("type") != "null"]
        if len(present) != 1:
            raise ValueError(f"cannot express a union of {len(present)} types structurally: {variants}")
        node = {**present[0], **node}
        if len(present) < len(variants):
            node["nullable"] = True
    while "$ref" in node:
        referenced = definitions[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**referenced, **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("exclusiveMinimum"), int | float):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "format" in node and node["format"] not in _KUBERNETES_FORMATS:
        del node["format"]
    if node.get("default", ...) is None:
        del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(child, definitions) for name, child in value.items()}
        else:
            out[key] = _structural(value, definitions)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _column(name: str, json_path: str, description: str, kind: str = "string", priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": json_path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def _condition_column(name: str, condition: str) -> dict[str, Any]:
    return _column(name, f'.status.conditions[?(@.type=="{condition}")].status', f"The `{condition}` condition.")


def _definition(
    kind: str,
    plural: str,
    scope: str,
    short_names: list[str],
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    description: str,
    labels: dict[str, str],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": labels},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["sovereign"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": structural_schema(spec),
                                "status": structural_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def custom_resource_definitions(labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The `ModelDeployment` and `ResidencyPolicy` CRDs."""
    labels = {"app.kubernetes.io/part-of": "sovereign-stack", "app.kubernetes.io/component": "crds", **(labels or {})}
    return [
        _definition(
            "ModelDeployment",
            "modeldeployments",
            "Namespaced",
            ["mdep"],
            ModelDeploymentSpec,
            ModelDeploymentStatus,
            [
                _column("Model", ".status.modelName", "Registered model."),
                _column("Alias", ".status.alias", "Alias served."),
                _column("Version", ".status.modelVersion", "Version the alias points at.", priority=1),
                _column("Engine", ".spec.engine", "The inference engine (vllm)."),
                _column("GPUs", ".status.gpus", "GPUs at the most replicas.", kind="integer", priority=1),
                _condition_column("Ready", "Ready"),
                _condition_column("Compliant", "PolicyCompliant"),
            ],
            "A registered model served on KubeRay, pinned to in-country GPU nodes and checked against the "
            "residency policy.",
            labels,
        ),
        _definition(
            "ResidencyPolicy",
            "residencypolicies",
            "Cluster",
            ["rpol"],
            PolicySpec,
            ResidencyPolicyStatus,
            [
                _column("Jurisdiction", ".spec.jurisdiction.code", "Country data stays in."),
                _condition_column("Valid", "Valid"),
                _column("Digest", ".status.digest", "SHA-256 of the document.", priority=1),
            ],
            "The residency and access policy document (`sovereign policy check` validates the same model).",
            labels,
        ),
    ]
