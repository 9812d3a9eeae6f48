"""Test-support code: strict Kubernetes validators, Helm render helpers. Never imported by
the atelier package (tests/unit/runtime/test_runtime_imports.py checks it)."""
