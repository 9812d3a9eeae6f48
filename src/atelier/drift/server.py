"""Run the drift sidecar: `atelier drift` or `python -m atelier.drift`."""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from types import FrameType

from atelier.drift.settings import DriftSettings, from_args
from atelier.runtime.errors import exit_on_error


def run(settings: DriftSettings) -> None:
    import uvicorn

    from atelier.drift.app import create_app
    from atelier.drift.service import DriftService

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


def main(argv: Sequence[str] | None = None) -> None:
    """Flags (one per DriftSettings field, see atelier.drift.settings) override env vars; an
    unknown flag exits 2 with argparse's message, a bad value exits 2 naming the setting."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with exit_on_error():
        run(from_args(argv))
