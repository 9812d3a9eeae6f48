"""The two peers `atelier bench serve` measures the KServe runtime against: the servers a
user would write around the same model without atelier's runtime.

- ``kserve``: a bare ``kserve.Model`` whose ``load`` builds the network from the .mar's
  ``model_config.json`` and ``weights.pt`` and whose ``predict`` classifies the PNG of a
  raw ``POST /v1/models/<name>:predict`` (a non-JSON body reaches ``predict`` as bytes), on
  KServe's ModelServer with its defaults (one process, its request-latency logging and
  timing middleware), bound to 127.0.0.1.
- ``fastapi``: a plain FastAPI app with one ``POST /predict`` route doing the same, under
  ``uvicorn.run`` with its defaults (one process, the access log).

Both decode with Pillow, normalise with numpy and run one forward pass per request in the
request's own code path, as such servers usually do; no batching, no spool, no metrics of
atelier's. ``python -m atelier.tools.bench.peers {kserve|fastapi} --model-dir D --port P``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the route's annotations here

from atelier.tools.process import ServerProcess

PEERS = ("kserve", "fastapi")


@dataclass
class PeerModel:
    model: Any  # torch.nn.Module
    mean: np.ndarray
    std: np.ndarray
    size: int
    class_names: list[str]

    @classmethod
    def load(cls, model_dir: Path) -> PeerModel:
        import torch

        from atelier.runtime.model import build_model

        cfg = json.loads((model_dir / "model_config.json").read_text())
        net = build_model(cfg["arch"], cfg["in_channels"], cfg["num_classes"], cfg["dropout"])
        net.load_state_dict(torch.load(model_dir / "weights.pt", map_location="cpu"))
        net.eval()
        mean = np.asarray(cfg["mean"], np.float32).reshape(-1, 1, 1)
        std = np.asarray(cfg["std"], np.float32).reshape(-1, 1, 1)
        return cls(net, mean, std, cfg["image_size"], cfg["class_names"])

    def classify(self, png: bytes) -> dict[str, Any]:
        import torch
        from PIL import Image

        img = Image.open(io.BytesIO(png)).convert("L").resize((self.size, self.size))
        x = (np.asarray(img, np.float32)[None] / 255.0 - self.mean) / self.std
        with torch.no_grad():
            probs = torch.softmax(self.model(torch.from_numpy(x[None])), dim=1)[0]
        i = int(probs.argmax())
        return {"label": self.class_names[i], "class_id": i, "confidence": float(probs[i])}


def serve_kserve(model_dir: Path, name: str, host: str, port: int) -> None:
    del sys.argv[1:]  # kserve.model_server parses sys.argv on import
    from kserve import Model, ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    class PngClassifier(Model):
        def load(self) -> bool:
            self.net = PeerModel.load(model_dir)
            self.ready = True
            return True

        def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            return {"predictions": [self.net.classify(payload)]}

    model = PngClassifier(name)
    model.load()
    server = ModelServer(http_port=port, workers=1, enable_grpc=False)
    server.register_model(model)
    model.enable_latency_logging = server.enable_latency_logging  # as ModelServer.start
    # ModelServer.start's REST server, bound to the loopback instead of 0.0.0.0.
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane,
                      server.model_repository_extension, port)  # fmt: skip
    rest.config.host = host
    rest.run()


def serve_fastapi(model_dir: Path, host: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    net = PeerModel.load(model_dir)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        return net.classify(await request.body())

    uvicorn.run(app, host=host, port=port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atelier.tools.bench.peers")
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--model-dir", type=Path, required=True, help="an unzipped .mar")
    parser.add_argument("--name", default="model", help="the kserve.Model's name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    ns = parser.parse_args(argv)
    if ns.peer == "kserve":
        serve_kserve(ns.model_dir, ns.name, ns.host, ns.port)
    else:
        serve_fastapi(ns.model_dir, ns.host, ns.port)
    return 0


# --- The launcher the bench uses


class PeerServer(ServerProcess):
    """A peer in its own process group on 127.0.0.1; use as a context manager."""

    log_file = "peer.out"

    def __init__(self, peer: str, model_dir: Path, name: str, run_dir: Path, port: int,
                 probe: bytes, omp_threads: int = 1) -> None:  # fmt: skip
        super().__init__(run_dir, name, 120.0)
        self.peer, self.model_dir, self.port, self.probe = peer, model_dir, port, probe
        self.omp_threads = omp_threads
        self.label = f"the {peer} peer"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def path(self) -> str:
        return f"/v1/models/{self.model_name}:predict" if self.peer == "kserve" else "/predict"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "atelier.tools.bench.peers", self.peer,
                "--model-dir", str(self.model_dir), "--name", self.model_name,
                "--port", str(self.port)]  # fmt: skip

    def environment(self) -> dict[str, str]:
        import os

        return {**os.environ, "OMP_NUM_THREADS": str(self.omp_threads), "PYTHONUNBUFFERED": "1"}

    def is_ready(self) -> bool:
        import requests

        try:
            r = requests.post(self.inference_url + self.path, data=self.probe,
                              headers={"Content-Type": "image/png"}, timeout=2)  # fmt: skip
        except requests.RequestException:
            return False
        return r.status_code == 200


if __name__ == "__main__":
    sys.exit(main())
