"""TorchServe entry module for atelier models: a thin subclass of BaseHandler.

Everything that matters (decoding, preprocessing, the network, the response format) lives
in the ``atelier`` package, which `atelier archive` ships inside the .mar. The copy in the
archive is put first on sys.path, so the server runs exactly the code the model was
archived with.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler


class AtelierHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        from atelier.inference import Classifier

        version = context.manifest.get("model", {}).get("modelVersion")
        self.classifier = Classifier.from_dir(Path(model_dir), version=version)
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        import numpy as np

        arrays = []
        self.top_k = []
        for i, row in enumerate(data):
            body = row.get("data") or row.get("body")
            arrays.append(self.classifier.to_input(bytes(body)))
            # TorchServe drops query parameters when a request has a body, so the number of
            # classes to list travels in a header: X-Top-K: 10
            self.top_k.append(int(self._header(i, "x-top-k") or 5))
        return np.stack(arrays)

    def _header(self, index: int, name: str) -> str | None:
        for variant in (name, name.title(), name.upper()):
            value = self.context.get_request_header(index, variant)
            if value is not None:
                return str(value)
        return None

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        return self.classifier.predict_proba(data)

    def postprocess(self, data: Any) -> list[dict[str, Any]]:
        request_ids = getattr(self.context, "request_ids", None) or {}
        return [
            self.classifier.describe(probs, str(request_ids.get(i) or uuid.uuid4()), self.top_k[i])
            for i, probs in enumerate(data)
        ]
