"""The drift sidecar: reads the feature spool, compares windows with the reference profile."""
