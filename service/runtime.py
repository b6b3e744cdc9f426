"""Inference sessions for the bundle's encoders (ONNX Runtime, or OpenVINO on request); shared by
export (scoring) and the service. No torch here: the serving container does not ship it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from simclr_embed.errors import ConfigError

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "openvino")
# Runtimes besides ONNX Runtime (the reference) that the export checks against ONNX Runtime FP32
# on its test images; provider=auto chooses among those that passed, and ONNX Runtime.
GATED_RUNTIMES = ("openvino",)
AUTO_BATCH, AUTO_RUNS = 64, 3  # how auto times each candidate
CHOICE_FILE = "runtime-choice.json"  # in the data directory
# How idle intra-op threads wait: "run" spins between the operators of a run and sleeps once it
# returns, "always" spins after runs too, "off" never spins (ORT's allow_spinning and
# force_spinning_stop; docs/benchmarks.md, "Serving").
SPINNING = ("run", "always", "off")


class OpenVinoSession:
    """OpenVINO compiled from the same ONNX file (QDQ for INT8), behind the two calls the
    engine makes of an ONNX Runtime session. Faster than ONNX Runtime on some x86 CPUs for the
    INT8 graph (docs/benchmarks.md, "Serving"); one inference request per calling thread, as
    OpenVINO's requests must not be shared by concurrent calls."""

    def __init__(self, path: Path | str, threads: int, hint: str = "LATENCY",
                 precision: str = "f32") -> None:
        import openvino as ov

        core = ov.Core()
        # One request at a time (the engine's model thread): LATENCY's single stream uses every
        # core for it. f32 keeps the non-quantized operators exact
        # (benchmarks/archive/openvino_knobs.py measured the alternatives).
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
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
        raise ConfigError(f"unknown provider {provider!r}; valid choices: {', '.join(PROVIDERS)}")
    if spinning not in SPINNING:
        raise ConfigError(f"unknown spinning {spinning!r}; valid choices: {', '.join(SPINNING)}")
    if provider == "openvino":
        try:
            session = OpenVinoSession(path, threads)
        except ImportError:
            raise ConfigError("provider 'openvino' needs the openvino package: "
                             "pip install openvino") from None
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
    session: ort.InferenceSession | OpenVinoSession, images: np.ndarray, batch_size: int = 64,
    desc: str = "onnx"
) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 -> embeddings (N, D) and logits (N, C), in batches."""
    name = session.get_inputs()[0].name
    emb, logits = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        e, lg = session.run(None, {name: images[start : start + batch_size]})
        emb.append(e)
        logits.append(lg)
    return np.concatenate(emb), np.concatenate(logits)


def eligible(manifest: dict, precision: str) -> tuple[list[str], list[str]]:
    """(runtimes auto may choose for this bundle and precision, why the others may not)."""
    gates = manifest.get("metrics", {}).get("runtimes", {})
    ok, why_not = ["cuda" if "CUDAExecutionProvider" in ort.get_available_providers()
                   else "cpu"], []
    for runtime in GATED_RUNTIMES:
        gate = gates.get(runtime, {}).get(precision)
        if gate is None:
            why_not.append(f"{runtime}: not checked when the bundle was exported")
        elif not gate["passed"]:
            why_not.append(f"{runtime}: failed the export's gates (mean cosine "
                           f"{gate['cosine_mean']:.4f}, top-1 drop "
                           f"{gate['linear_drop_points']:.2f} points)")
        else:
            ok.append(runtime)
    return ok, why_not


def median_run_s(session, x: np.ndarray, runs: int) -> float:
    """Seconds one run on x takes: the median of `runs`, after one warm-up run."""
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_batch(session, size: int) -> float:
    """images/s of one session at AUTO_BATCH."""
    x = np.zeros((AUTO_BATCH, size, size, 3), np.uint8)
    return AUTO_BATCH / median_run_s(session, x, AUTO_RUNS)


def provider_name(session) -> str:
    """The PROVIDERS name of an open session."""
    return {"OpenVINO-CPU": "openvino", "CUDAExecutionProvider": "cuda"}.get(
        session.get_providers()[0], "cpu")


def choice_key(path: Path, manifest: dict, precision: str, threads: int) -> str:
    """What a cached choice depends on: the encoder file, the host's CPU, the runtimes'
    versions and the thread count."""
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                if line.startswith("model name")), "")
    versions = []
    for pkg in ("onnxruntime", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{pkg} {version(pkg)}")
    digest = manifest.get("files", {}).get(Path(path).name, {}).get("sha256", str(path))
    return "|".join([digest, precision, str(threads), cpu, str(os.cpu_count()), *versions])


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def open_runtime(path: Path, manifest: dict, precision: str, threads: int = 0,
                 provider: str = "auto", choice_file: Path | None = None, *,
                 spinning: str = "run") -> tuple[Any, str]:
    """(session, why this runtime): the asked provider, or for "auto" the fastest at batch 64
    on this host among the runtimes that passed the bundle's gates and are installed. The
    choice is kept in `choice_file` (the data directory's), so that later starts, their other
    workers and `simclr-embed index` make the same one without timing again: one gallery, one
    runtime's vectors. Delete the file to time again."""
    if provider != "auto":
        return make_session(path, threads, provider, spinning), f"{provider} (asked for)"
    candidates, why_not = eligible(manifest, precision)
    key = choice_key(path, manifest, precision, threads)
    kept = _read_choice(choice_file, key)
    if kept is not None and choice_file is not None and kept["provider"] in candidates:
        return (make_session(path, threads, kept["provider"], spinning),
                f"{kept['reason']} (kept in {choice_file.name})")
    size = int(manifest["input"]["size"])
    rates, sessions = {}, {}
    for name in candidates:
        try:
            sessions[name] = make_session(path, threads, name, spinning)
        except ValueError as e:  # openvino not installed
            why_not.append(f"{name}: {e}")
            continue
        rates[name] = time_batch(sessions[name], size) if len(candidates) > 1 else None
    best = max(rates, key=lambda n: rates[n] or 0)
    timed = ", ".join(f"{n} {r:.0f} images/s" for n, r in rates.items() if r)
    reason = (f"auto: {best}, the fastest at batch {AUTO_BATCH} here ({timed})" if timed
              else f"auto: {best}, the only candidate")
    if why_not:
        reason += "; not eligible: " + "; ".join(why_not)
    _write_choice(choice_file, key, {"provider": best, "reason": reason})
    return sessions[best], reason


def _choices(path: Path | None) -> dict:
    """Every graph's choice, by key: the models of one server share the file."""
    try:
        kept = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in kept.items() if isinstance(v, dict)} if isinstance(kept, dict) \
        else {}


def _read_choice(path: Path | None, key: str) -> dict | None:
    return _choices(path).get(key)


def _write_choice(path: Path | None, key: str, choice: dict) -> None:
    if path is None:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({**_choices(path), key: choice}, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:  # a read-only directory: the next start times again
        log.warning("could not keep the runtime choice in %s: %s", path, e)
