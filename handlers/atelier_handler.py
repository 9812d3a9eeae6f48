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
        for row in data:
            body = row.get("data") or row.get("body")
            arrays.append(self.classifier.to_input(bytes(body)))
        return np.stack(arrays)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        return self.classifier.predict_proba(data)

    def postprocess(self, data: Any) -> list[dict[str, Any]]:
        request_ids = getattr(self.context, "request_ids", None) or {}
        return [
            self.classifier.describe(probs, str(request_ids.get(i) or uuid.uuid4()))
            for i, probs in enumerate(data)
        ]
