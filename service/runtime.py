"""Inference sessions for the bundle's encoders (ONNX Runtime, or OpenVINO on request); shared by
export (scoring) and the service. No torch here: the serving container does not ship it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "openvino")
# How idle intra-op threads wait: "run" spins between the operators of a run and sleeps once it
# returns, "always" spins after runs too, "off" never spins (ORT's allow_spinning and
# force_spinning_stop; README, "Serving").
SPINNING = ("run", "always", "off")


class OpenVinoSession:
    """OpenVINO compiled from the same ONNX file (QDQ for INT8), behind the two calls the
    engine makes of an ONNX Runtime session. Faster than ONNX Runtime on some x86 CPUs for the
    INT8 graph (README, "Serving"); one inference request per calling thread, as
    OpenVINO's requests must not be shared by concurrent calls."""

    def __init__(self, path: Path | str, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.local = threading.local()
        self.input_name = self.compiled.inputs[0].get_any_name()

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=self.input_name)]

    def get_providers(self) -> list[str]:
        return ["OpenVINO-CPU"]

    def run(self, _outputs: None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not hasattr(self.local, "request"):
            self.local.request = self.compiled.create_infer_request()
        result = self.local.request.infer(feed)
        return [result[out] for out in self.compiled.outputs]  # embedding, logits: graph order


def make_session(path: Path | str, threads: int = 0, provider: str = "cpu",
                 spinning: str = "run") -> ort.InferenceSession | OpenVinoSession:
    """A session on the asked provider; CUDA falls back to CPU, with a log line, when absent.
    `spinning` is one of SPINNING: threads that spin after a run take the cores from the event
    loop, threads that never spin wake late for each operator."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; valid choices: {', '.join(PROVIDERS)}")
    if spinning not in SPINNING:
        raise ValueError(f"unknown spinning {spinning!r}; valid choices: {', '.join(SPINNING)}")
    if provider == "openvino":
        try:
            session = OpenVinoSession(path, threads)
        except ImportError:
            raise ValueError("provider 'openvino' needs the openvino package: "
                             "pip install 'simclr-embed[openvino]'") from None
        log.info("loaded %s on OpenVINO (CPU)", Path(path).name)
        return session
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0 = ORT's default (one per physical core)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning",
                                  "0" if spinning == "off" else "1")
    opts.add_session_config_entry("session.force_spinning_stop",
                                  "1" if spinning == "run" else "0")
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
