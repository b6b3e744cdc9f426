"""ONNX Runtime sessions for the bundle's encoders; shared by export (scoring) and the service.
No torch here: the serving container does not ship it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda")


def make_session(path: Path | str, threads: int = 0, provider: str = "cpu",
                 spinning: bool = True) -> ort.InferenceSession:
    """A session on the asked provider; CUDA falls back to CPU, with a log line, when absent.
    spinning=False stops idle intra-op threads from busy-waiting between runs, which frees the
    cores for other work in the process (gallery search) at some cost in back-to-back latency."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; valid choices: {', '.join(PROVIDERS)}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0 = ORT's default (one per physical core)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("CUDA asked for but onnxruntime has no CUDAExecutionProvider; using CPU")
    session = ort.InferenceSession(str(path), opts, providers=providers)
    log.info("loaded %s on %s", Path(path).name, session.get_providers()[0])
    return session


def run_batches(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int = 64, desc: str = "onnx"
) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 -> embeddings (N, D) and logits (N, C), in batches."""
    name = session.get_inputs()[0].name
    emb, logits = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        e, lg = session.run(None, {name: images[start : start + batch_size]})
        emb.append(e)
        logits.append(lg)
    return np.concatenate(emb), np.concatenate(logits)
