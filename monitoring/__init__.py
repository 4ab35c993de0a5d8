"""Prometheus monitoring for sovereign-stack: the metric catalogue, alert rules and Grafana dashboards.

Built on `policies`. The catalogue (`monitoring.catalogue`) is the one place metrics are defined.
"""
