"""Serving: the KServe app around the runtime's batch service, and the serving metrics."""
