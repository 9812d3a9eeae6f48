"""Run the drift sidecar: `atelier drift` or `python -m atelier.drift`."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from types import FrameType

from atelier.drift.settings import load_settings
from atelier.runtime.errors import exit_on_error


def run(**overrides: object) -> None:
    import uvicorn

    from atelier.drift.app import create_app
    from atelier.drift.service import DriftService

    settings = load_settings(**overrides)
    service = DriftService(settings)
    service.start()
    config = uvicorn.Config(create_app(service), host=settings.host, port=settings.port,
                            log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)

    def _term(signum: int, frame: FrameType | None) -> None:
        # uvicorn handles SIGTERM during run() and re-raises it afterwards to the handler
        # that was there before: this one, so the process goes on to stop the service.
        server.should_exit = True

    signal.signal(signal.SIGTERM, _term)
    try:
        server.run()
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    p = argparse.ArgumentParser(prog="atelier drift", description="The drift sidecar.")
    p.add_argument("--spool-dir", type=Path)
    p.add_argument("--store", type=Path)
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--reports-dir", type=Path)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--report-every-records", type=int)
    p.add_argument("--report-every-seconds", type=float)
    ns = p.parse_args(argv)
    with exit_on_error():
        run(**vars(ns))
