"""Monitoring: the local Prometheus/Alertmanager stack, Grafana dashboards as code, snapshots.

The files these load and generate live in monitoring/ at the project root, the one source
of truth for the local stack and the Helm chart.
"""
