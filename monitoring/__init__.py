"""Prometheus monitoring for sovereign-stack: the metric catalogue, alert rules and Grafana dashboards.

Built on `policies`; it lands with the monitoring issue (see docs/ARCHITECTURE.md).
"""
