"""Where the project's checked-in files are, whether atelier runs from a checkout or an image."""

from __future__ import annotations

import os
from pathlib import Path

HANDLER_FILE = "handlers/atelier_handler.py"
CONFIG_TEMPLATE = "model-store/config/config.properties.template"
METRICS_CONFIG = "model-store/config/metrics.yaml.template"


def project_root() -> Path:
    """ATELIER_HOME if set, else the checkout this package lives in, else the working dir."""
    env = os.environ.get("ATELIER_HOME")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / HANDLER_FILE).is_file():
        return checkout
    return Path.cwd()


def project_file(relative: str) -> Path:
    return project_root() / relative
