"""TorchServe entry module for atelier models: a thin subclass of BaseHandler.

`atelier archive` puts this file in every .mar (as atelier_handler.py) next to a copy of
``atelier.runtime``. The archive's copy is put first on sys.path, so the server runs exactly
the code the model was archived with. Everything that matters (protocol parsing, decoding,
the network, the response bodies, the feature spool, reading TorchServe's rows and headers,
the metrics) lives in that runtime; what is left here is the TorchServe class itself.
"""

from __future__ import annotations

import sys
from typing import Any

from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler


class AtelierHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        from atelier.runtime import torchserve

        self._torchserve = torchserve
        # The ATELIER_* settings are checked first: a bad one fails the load, naming it.
        self.service = torchserve.load(context)
        self.context = context
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        return self._torchserve.handle(self.service, data, context, MetricTypes)
