"""The model runtime: what a .mar ships and what the serving image runs.

The model class, decoding and preprocessing, the classifier, the drift features, the
request protocols, the batch service, the spool record format and the typed errors. Its
modules import only the standard library, numpy, Pillow, torch and each other
(tests/unit/runtime/test_runtime_imports.py checks it), so the copy inside an archive runs
without the rest of atelier.
"""
