"""Local tools: launchers (TorchServe, KServe, the drift sidecar, Prometheus/Alertmanager
under one process supervisor), benches, the load test, dashboard snapshots, and the sync of
the chart's and kustomize's generated files. They run from a checkout, not in an image.
"""
