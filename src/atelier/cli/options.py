"""Defaults several command groups share."""

from __future__ import annotations

from pathlib import Path

DEFAULT_STORE = Path("model-store")
