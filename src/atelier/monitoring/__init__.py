"""Monitoring: Grafana dashboards as code.

The files these load and generate live in monitoring/ at the project root, the one source
of truth for the local stack and the Helm chart. The local Prometheus/Alertmanager stack
and the dashboard snapshots are tools (atelier.tools.stack, atelier.tools.snapshot).
"""
