"""The operator's only contact with the API server: apply objects, delete the ones no longer wanted,
read a RayService's readiness. Handlers take a `Cluster`, so tests hand them an in-memory one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

# Every kind the operator creates for a ModelDeployment, as (apiVersion, kind).
OWNED_KINDS = (
    ("ray.io/v1", "RayService"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("policy/v1", "PodDisruptionBudget"),
)
FIELD_MANAGER = "sovereign-operator"


def object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def ray_service_ready(ray_service: Mapping[str, Any] | None) -> bool | None:
    """KubeRay's `Ready` condition; None while there is no RayService or it has not reported yet."""
    if ray_service is None:
        return None
    for condition in (ray_service.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return None


class Cluster(Protocol):
    def apply(self, obj: Mapping[str, Any]) -> None:
        """Create or update `obj` (server-side apply)."""

    def delete_unwanted(self, namespace: str, labels: Mapping[str, str], wanted: set[tuple[str, str]]) -> list[str]:
        """Delete objects of `OWNED_KINDS` carrying `labels` whose (kind, name) is not in `wanted`; `Kind/name` each."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None: ...


class KubernetesCluster:
    """The real API server, through the official client's dynamic API and server-side apply."""

    def __init__(self) -> None:
        from kubernetes import config, dynamic
        from kubernetes.client import api_client

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.client = dynamic.DynamicClient(api_client.ApiClient())

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.client.resources.get(api_version=api_version, kind=kind)

    def apply(self, obj: Mapping[str, Any]) -> None:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        resource.server_side_apply(
            body=dict(obj),
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )

    def delete_unwanted(self, namespace: str, labels: Mapping[str, str], wanted: set[tuple[str, str]]) -> list[str]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        deleted = []
        for api_version, kind in OWNED_KINDS:
            resource = self._resource(api_version, kind)
            for item in resource.get(namespace=namespace, label_selector=selector).items:
                if (kind, item.metadata.name) not in wanted:
                    resource.delete(name=item.metadata.name, namespace=namespace)
                    deleted.append(f"{kind}/{item.metadata.name}")
        return deleted

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None
