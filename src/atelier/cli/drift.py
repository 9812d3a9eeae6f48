"""`atelier drift`: the drift sidecar in the foreground; its flags are its settings'."""

from __future__ import annotations

import typer

# Typer passes every argument through: atelier.drift.settings makes the flags (and --help).
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def drift(ctx: typer.Context) -> None:
    """Run the drift sidecar (flags: atelier drift --help)."""
    from atelier.drift.server import main as drift_main

    drift_main(list(ctx.args))
