"""Where a checkout's files are, for the tools that run from one (chart and kustomize sync,
the local monitoring stack, dashboards, benches, the load test). Nothing that runs in an
image reads the checkout: training's templates are package data."""

from __future__ import annotations

import os
from pathlib import Path

# A file only a checkout has, next to src/.
MARKER = "charts/atelier/Chart.yaml"


def project_root() -> Path:
    """ATELIER_HOME if set, else the checkout this package lives in, else the working dir."""
    env = os.environ.get("ATELIER_HOME")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / MARKER).is_file():
        return checkout
    return Path.cwd()


def project_file(relative: str) -> Path:
    return project_root() / relative
