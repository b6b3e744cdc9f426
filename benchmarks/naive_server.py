"""The baseline our service is measured against: what one writes first with FastAPI and ONNX
Runtime. One uvicorn worker, Pillow decode, one session, no batching, no admission control;
the route blocks the event loop for the decode and the model, so requests run one at a time.

    SIMCLR_EMBED_BUNDLE=bundles/default python -m simclr_embed.benchmarks.naive_server
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

opts = ort.SessionOptions()
opts.intra_op_num_threads = int(os.environ.get("SIMCLR_EMBED_THREADS", "0"))
session = ort.InferenceSession(str(BUNDLE / MANIFEST["encoders"][PRECISION]), opts,
                               providers=["CPUExecutionProvider"])
app = FastAPI()


@app.get("/readyz")
async def ready() -> dict:
    return {"status": "ready"}


@app.post("/v1/embed")
async def embed(request: Request) -> dict:
    image = Image.open(io.BytesIO(await request.body())).convert("RGB").resize((SIZE, SIZE))
    emb, _ = session.run(None, {"pixels": np.asarray(image)[None]})
    return {"embeddings": emb.tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("SIMCLR_EMBED_HOST", "127.0.0.1"),
                port=int(os.environ.get("SIMCLR_EMBED_PORT", "8001")), access_log=False)
