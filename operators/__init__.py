"""Kubernetes operators (kopf) for `ModelDeployment` and `ResidencyPolicy` custom resources.

Built on `policies`; it lands with the Kubernetes issue (see docs/ARCHITECTURE.md).
"""
