"""Serving: starting the model servers that run the atelier handler."""
