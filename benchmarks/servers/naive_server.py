"""The baseline our service is measured against: what one writes first with FastAPI and ONNX
Runtime (or OpenVINO, SIMCLR_EMBED_PROVIDER=openvino, so that the comparison can be on the same
engine). One uvicorn worker, Pillow decode, one session, no batching, no admission control;
the route blocks the event loop for the decode and the model, so requests run one at a time.

    SIMCLR_EMBED_BUNDLE=bundles/default python -m simclr_embed.benchmarks.servers.naive_server
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

BUNDLE = Path(os.environ.get("SIMCLR_EMBED_BUNDLE", "bundles/default"))
PRECISION = os.environ.get("SIMCLR_EMBED_PRECISION", "int8")
MANIFEST = json.loads((BUNDLE / "manifest.json").read_text())
SIZE = int(MANIFEST["input"]["size"])

THREADS = int(os.environ.get("SIMCLR_EMBED_THREADS", "0"))
MODEL = str(BUNDLE / MANIFEST["encoders"][PRECISION])
if os.environ.get("SIMCLR_EMBED_PROVIDER") == "openvino":
    import openvino as ov

    compiled = ov.Core().compile_model(MODEL, "CPU", {"INFERENCE_NUM_THREADS": THREADS} if
                                       THREADS else {})

    def infer(pixels: np.ndarray) -> np.ndarray:
        return compiled(pixels)[0]
else:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    session = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])

    def infer(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {"pixels": pixels})[0]
app = FastAPI()


@app.get("/readyz")
async def ready() -> dict:
    return {"status": "ready"}


@app.post("/v1/embed")
async def embed(request: Request) -> dict:
    image = Image.open(io.BytesIO(await request.body())).convert("RGB").resize((SIZE, SIZE))
    return {"embeddings": infer(np.asarray(image)[None]).tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("SIMCLR_EMBED_HOST", "127.0.0.1"),
                port=int(os.environ.get("SIMCLR_EMBED_PORT", "8001")), access_log=False)
