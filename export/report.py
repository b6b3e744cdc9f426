"""FP32 vs INT8 on the same data and the same metrics: kNN top-1, linear-head top-1, cosine
between the two precisions' embeddings, top-10 retrieval overlap, size and ORT latency."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr_embed.service.runtime import GATED_RUNTIMES, make_session, run_batches
from simclr_embed.training.evaluate import knn_accuracy

PRECISIONS = ("fp32", "int8")


def top_k_ids(query: np.ndarray, gallery: np.ndarray, k: int = 10,
              chunk: int = 1024) -> np.ndarray:
    """(Q, D), (N, D) unit-norm -> (Q, k) gallery indices by inner product, best first.
    Queries go in chunks: a full (Q, N) score matrix for the 10k x 50k default would be 2 GB."""
    out = []
    for q in np.array_split(query, max(1, -(-len(query) // chunk))):
        sims = q @ gallery.T  # (q, N)
        part = np.argpartition(-sims, k, axis=1)[:, :k]  # (q, k) unordered
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out)


def latency_ms(session, images: np.ndarray, batch: int, reps: int) -> float:
    name = session.get_inputs()[0].name
    x = images[:batch]
    session.run(None, {name: x})  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def interleaved_latency(sessions: dict, images: np.ndarray, batch: int, rounds: int = 5,
                        reps: int = 5) -> dict[str, float]:
    """Median ms per call, variants interleaved round by round so drift hits them alike."""
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            samples[k].append(latency_ms(s, images, batch, reps))
    return {k: statistics.median(v) for k, v in samples.items()}


def embed_all(session, gallery: np.ndarray, test: np.ndarray, precision: str,
              batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery embeddings, test embeddings, test logits) from one encoder."""
    g_emb, _ = run_batches(session, gallery, batch_size, desc=f"{precision} gallery")
    t_emb, t_logits = run_batches(session, test, batch_size, desc=f"{precision} test")
    return g_emb, t_emb, t_logits


def compare(
    emb: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], gallery_labels: np.ndarray,
    test_labels: np.ndarray, sessions: dict, paths: dict[str, Path], test: np.ndarray,
    latency_rounds: int = 5,
) -> dict[str, Any]:
    """The FP32-vs-INT8 report from each precision's `embed_all` output, keyed by precision."""
    out: dict[str, Any] = {"test_images": len(test_labels), "gallery_images": len(gallery_labels)}
    for p, (g_emb, t_emb, t_logits) in emb.items():
        out[p] = {
            "knn_top1": knn_accuracy(torch.from_numpy(g_emb), torch.from_numpy(gallery_labels),
                                     torch.from_numpy(t_emb), torch.from_numpy(test_labels)),
            "linear_top1": 100.0 * float((t_logits.argmax(1) == test_labels).mean()),
            "size_mb": paths[p].stat().st_size / 2**20,
        }
    cos = (emb["fp32"][1] * emb["int8"][1]).sum(1)  # (Q,) both unit-norm
    ids = {p: top_k_ids(emb[p][1], emb[p][0]) for p in emb}  # (Q, 10) each
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(ids["fp32"], ids["int8"], strict=True)]
    out["cosine_mean"], out["cosine_min"] = float(cos.mean()), float(cos.min())
    out["top10_overlap"] = float(np.mean(overlap))
    for batch in (1, 64):
        lat = interleaved_latency(sessions, test, batch, latency_rounds)
        for p, ms in lat.items():
            out[p][f"latency_ms_b{batch}"] = ms
        out[f"int8_speedup_b{batch}"] = lat["fp32"] / lat["int8"]
    out["linear_drop_points"] = out["fp32"]["linear_top1"] - out["int8"]["linear_top1"]
    return out


def runtime_gates(paths: dict[str, Path], test: np.ndarray, test_labels: np.ndarray,
                  reference: tuple[np.ndarray, np.ndarray], threads: int, min_cosine: float,
                  max_drop: float) -> dict[str, dict[str, dict[str, Any]]]:
    """Each installed runtime besides ONNX Runtime, at each precision, against ONNX Runtime
    FP32 (`reference`: test embeddings and logits): mean cosine and linear top-1 drop, and
    whether both pass. `provider=auto` only ever chooses a runtime that passed."""
    ref_emb, ref_logits = reference
    ref_top1 = 100.0 * float((ref_logits.argmax(1) == test_labels).mean())
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for runtime in GATED_RUNTIMES:
        for p, path in paths.items():
            try:
                session = make_session(path, threads, runtime)
            except ValueError:  # not installed here: never chosen for this bundle
                break
            emb, logits = run_batches(session, test, desc=f"{runtime} {p}")
            cos = float((emb * ref_emb).sum(1).mean())
            drop = ref_top1 - 100.0 * float((logits.argmax(1) == test_labels).mean())
            out.setdefault(runtime, {})[p] = {
                "cosine_mean": cos, "linear_drop_points": drop,
                "passed": cos >= min_cosine and drop <= max_drop}
    return out


def markdown(report: dict[str, Any]) -> str:
    rows = [
        ("kNN top-1 (%)", "knn_top1", "{:.2f}"),
        ("linear-head top-1 (%)", "linear_top1", "{:.2f}"),
        ("model size (MB)", "size_mb", "{:.1f}"),
        ("ORT latency batch 1 (ms)", "latency_ms_b1", "{:.2f}"),
        ("ORT latency batch 64 (ms)", "latency_ms_b64", "{:.1f}"),
    ]
    lines = ["| metric | FP32 | INT8 |", "| --- | --- | --- |"]
    for label, key, fmt in rows:
        lines.append(f"| {label} | {fmt.format(report['fp32'][key])} | "
                     f"{fmt.format(report['int8'][key])} |")
    lines += [
        f"| cosine FP32 vs INT8 (mean / min) | {report['cosine_mean']:.4f} / "
        f"{report['cosine_min']:.4f} | |",
        f"| top-10 retrieval overlap | {report['top10_overlap']:.3f} | |",
        f"| INT8 speed-up (batch 1 / 64) | {report['int8_speedup_b1']:.2f}x / "
        f"{report['int8_speedup_b64']:.2f}x | |",
    ]
    return (f"Test images: {report['test_images']}, gallery: {report['gallery_images']}.\n\n"
            + "\n".join(lines) + "\n")
