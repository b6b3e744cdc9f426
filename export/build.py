"""Checkpoint -> bundle, top to bottom: ONNX FP32 (+ parity vs PyTorch) -> INT8 (calibrated on a
stratified training subset) -> FP32 vs INT8 report on a stratified comparison subset -> the
gallery embedded at the precisions asked for, on the fastest runtime that passed its gates ->
manifest."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr_embed.errors import UserError
from simclr_embed.export.near_duplicates import calibrate
from simclr_embed.export.onnx_export import (
    Exporter,
    build_embed_classify,
    config_digest,
    export_onnx,
    weights_digest,
)
from simclr_embed.export.quantize import CalibrationMethod, QuantType, quantize_int8
from simclr_embed.export.report import compare, embed_all, markdown, runtime_gates
from simclr_embed.service.bundle import write_manifest
from simclr_embed.service.runtime import make_session, open_runtime, provider_name, run_batches
from simclr_embed.training.checkpoint import load_checkpoint
from simclr_embed.training.data import ImageArray, load_dataset, stratified_subset

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


class ExportError(UserError, RuntimeError):
    """The export ran but its result fails a check (parity, INT8 accuracy)."""


@dataclass
class ExportConfig:
    checkpoint: str
    out: str = "bundles/default"
    data: str | None = None  # None: the checkpoint's own data source
    exporter: Exporter = "torchscript"
    calibration_per_class: int = 30
    calibration_method: CalibrationMethod = "minmax"
    activation_type: QuantType = "quint8"
    weight_type: QuantType = "qint8"
    gallery_per_class: int | None = None  # None: the whole training split
    # The FP32-vs-INT8 report embeds this many gallery images per class at both precisions on
    # ONNX Runtime; the whole gallery is embedded only at `gallery_precisions`. FP32 runs at
    # about a tenth of INT8-on-OpenVINO's rate, so the full 50,000 at FP32 was 3 of the old
    # export's 5 minutes (docs/export.md).
    compare_per_class: int = 200
    test_per_class: int | None = 200  # None: the whole test split
    gallery_precisions: str = "int8"  # comma-separated; add fp32 to serve FP32
    tolerance: float = 2.0  # max INT8 linear top-1 drop vs FP32, in points
    min_cosine_mean: float = 0.99  # INT8 vs FP32 embeddings of the test images
    min_top10_overlap: float = 0.8  # shared top-10 gallery neighbours, INT8 vs FP32
    # Another runtime (OpenVINO) against ONNX Runtime FP32, for provider=auto to choose it.
    runtime_min_cosine: float = 0.998
    runtime_max_drop: float = 0.3  # linear top-1 points
    threads: int = 0
    latency_rounds: int = 3
    seed: int = 0


def check_parity(state: dict[str, Any], session, images: np.ndarray) -> float:
    """Max |ORT FP32 - PyTorch| over both outputs on real images; raises past the tolerance."""
    model = build_embed_classify(state)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(images))]
    got = session.run(None, {session.get_inputs()[0].name: images})
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, ref, strict=True))
    if diff > PARITY_TOLERANCE:
        raise ExportError(f"ONNX FP32 differs from PyTorch by {diff:.2e} > {PARITY_TOLERANCE}")
    return diff


def check_destination(out: Path) -> None:
    """Only a missing or empty directory, or an earlier bundle, may be replaced."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                               and not (out / "manifest.json").is_file())):
        raise ExportError(f"{out} exists and is not a bundle (no manifest.json): refusing to "
                          "replace it; choose another --out")


def build_bundle(cfg: ExportConfig) -> Path:
    """Builds in a sibling temp directory and swaps it in at the end, so a failed export leaves
    the previous bundle (which a server may be reading) untouched."""
    final = Path(cfg.out)
    check_destination(final)
    work = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _build(cfg, work)
        swap_in(work, final)
    except ExportError:
        if (work / "report.json").exists():  # keep the evidence of a rejected INT8 model
            kept = final.parent / f"{final.name}.rejected-report.json"
            shutil.copy(work / "report.json", kept)
            log.error("the rejected export's report: %s", kept)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("bundle written to %s", final)
    return final


def swap_in(new: Path, final: Path) -> None:
    """Two renames: the old bundle steps aside, the new one takes its name, the old is removed."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _build(cfg: ExportConfig, out: Path) -> None:
    start = time.perf_counter()
    state = load_checkpoint(cfg.checkpoint)
    train, test = load_dataset(cfg.data or state["config"]["data"], state["config"]["image_size"])
    if train.classes != state["classes"]:
        raise ExportError(f"data classes {train.classes} differ from the checkpoint's")
    served = precisions(cfg.gallery_precisions)  # a typo fails now, not after the long steps
    (out / "gallery").mkdir(parents=True)
    paths = {"fp32": out / "encoder_fp32.onnx", "int8": out / "encoder_int8.onnx"}

    log.info("1/5 exporting the FP32 ONNX graph (%s exporter)", cfg.exporter)
    export_onnx(state, paths["fp32"], cfg.exporter)
    fp32 = make_session(paths["fp32"], cfg.threads)
    parity = check_parity(state, fp32, test.images[:64])
    log.info("ONNX FP32 parity vs PyTorch: max abs diff %.2e", parity)

    calib = stratified_subset(train, cfg.calibration_per_class, cfg.seed + 1,
                              "--calibration-per-class")
    log.info("2/5 calibrating and quantizing INT8 on %d training images", len(calib))
    quantize_int8(paths["fp32"], paths["int8"], calib.images, cfg.calibration_method,
                  cfg.activation_type, cfg.weight_type)
    sessions = {"fp32": fp32, "int8": make_session(paths["int8"], cfg.threads)}

    gallery = stratified_subset(train, cfg.gallery_per_class, cfg.seed, "--gallery-per-class")
    shown = (gallery if len(gallery) <= cfg.compare_per_class * len(gallery.classes) else
             stratified_subset(gallery, cfg.compare_per_class, cfg.seed, "--compare-per-class"))
    test = stratified_subset(test, cfg.test_per_class, cfg.seed, "--test-per-class")
    log.info("3/5 embedding %d gallery and %d test images at both precisions for the report",
             len(shown), len(test))
    emb = {p: embed_all(s, shown.images, test.images, p) for p, s in sessions.items()}
    log.info("4/5 FP32 vs INT8: accuracy, agreement and latency; other runtimes' gates")
    report = compare(emb, shown.labels, test.labels, sessions, paths, test.images,
                     cfg.latency_rounds)
    report["parity_max_abs_diff"] = parity
    # Other runtimes are gated at the precisions served: without its gallery, a precision is not.
    report["runtimes"] = runtime_gates({p: paths[p] for p in served}, test.images, test.labels,
                                       emb["fp32"][1:], cfg.threads, cfg.runtime_min_cosine,
                                       cfg.runtime_max_drop)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    log.info("FP32 vs INT8:\n%s", markdown(report))
    check_int8(report, cfg)

    runtimes = write_gallery(out, gallery, shown, emb, paths, report, served, cfg)
    duplicates = {p: calibrate(lambda x, s=sessions[p]: run_batches(s, x, desc="calibrate")[0],
                               test.images, test.labels, cfg.seed) for p in served}
    np.save(out / "pca.npy", pca_rotation(emb["fp32"][0]))
    head = state["linear_head"]
    np.savez(out / "head.npz", weight=head["weight"].numpy(), bias=head["bias"].numpy())
    write_manifest(out, manifest(state, cfg, report, runtimes, time.perf_counter() - start)
                   | {"duplicates": duplicates})
    log.info("bundle built in %.0f s", time.perf_counter() - start)


def precisions(text: str) -> list[str]:
    asked = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(asked) - {"fp32", "int8"})
    if unknown or not asked:
        raise ExportError(f"--gallery-precisions takes fp32 and/or int8, got {text!r}")
    return asked


def write_gallery(out: Path, gallery: ImageArray, shown: ImageArray,
                  emb: dict[str, tuple[np.ndarray, ...]], paths: dict[str, Path], report: dict,
                  served: list[str], cfg: ExportConfig) -> dict[str, str]:
    """The gallery's ids, labels, thumbnails and its vectors at each asked precision: the
    report's when it embedded the whole gallery, else made here. -> {precision: runtime}."""
    runtimes = {}
    for p in served:
        if shown is gallery:
            vectors, runtimes[p] = emb[p][0], "cpu"
        else:
            vectors, runtimes[p] = embed_gallery(paths[p], report, p, gallery.images, cfg)
        np.save(out / f"gallery/embeddings_{p}.npy", vectors.astype(np.float32))
    np.save(out / "gallery/ids.npy", np.array([f"{gallery.classes[y]}/{i}" for i, y in
                                               enumerate(gallery.labels)]))
    np.save(out / "gallery/labels.npy", gallery.labels)
    np.save(out / "gallery/thumbnails.npy", thumbnails(gallery.images))  # for the web page
    return runtimes


def embed_gallery(path: Path, report: dict, precision: str, images: np.ndarray,
                  cfg: ExportConfig) -> tuple[np.ndarray, str]:
    """(N, D) embeddings of the whole gallery and the runtime that made them: the one the
    service's provider=auto would choose here (the fastest that passed this export's gates)."""
    gates = {"metrics": {"runtimes": report["runtimes"]}, "input": {"size": images.shape[1]}}
    session, why = open_runtime(path, gates, precision, cfg.threads)
    log.info("5/5 embedding the %d-image gallery at %s on %s", len(images), precision, why)
    vectors, _ = run_batches(session, images, desc=f"{precision} gallery")
    return vectors, provider_name(session)


def pca_rotation(emb: np.ndarray) -> np.ndarray:
    """(N, D) unit vectors -> (D, D) float32 rows: the eigenvectors of their second moment,
    largest eigenvalue first. Uncentered, so that the rotation keeps inner products (cosine
    search) exactly at full dimension and the first d rows are the best d-dimensional
    subspace for them."""
    moment = emb.astype(np.float64).T @ emb.astype(np.float64) / len(emb)  # (D, D)
    _, vectors = np.linalg.eigh(moment)  # eigenvalues ascending
    return vectors[:, ::-1].T.astype(np.float32)


def thumbnails(images: np.ndarray, side: int = 32) -> np.ndarray:
    """(N, side, side, 3) uint8: the gallery images themselves when they are that small."""
    if images.shape[1:3] == (side, side):
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(x).resize((side, side), Image.Resampling.BICUBIC))
                     for x in images])


def check_int8(report: dict, cfg: ExportConfig) -> None:
    """INT8 must keep accuracy and the embedding space: linear top-1, cosine and neighbours."""
    failures = []
    if report["linear_drop_points"] > cfg.tolerance:
        failures.append(f"linear top-1 {report['linear_drop_points']:.2f} points below FP32 "
                        f"(tolerance {cfg.tolerance})")
    if report["cosine_mean"] < cfg.min_cosine_mean:
        failures.append(f"mean cosine to FP32 {report['cosine_mean']:.4f} < "
                        f"{cfg.min_cosine_mean}")
    if report["top10_overlap"] < cfg.min_top10_overlap:
        failures.append(f"top-10 overlap {report['top10_overlap']:.3f} < {cfg.min_top10_overlap}")
    if failures:
        raise ExportError(
            "INT8 fails its gates: " + "; ".join(failures) + ". Try --calibration-method "
            "entropy or percentile, or more --calibration-per-class. No bundle was written.")


def manifest(state: dict[str, Any], cfg: ExportConfig, report: dict, runtimes: dict[str, str],
             seconds: float) -> dict:
    size = state["config"]["image_size"]
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {p: version(p) for p in ("torch", "onnx", "onnxruntime", "numpy")},
        "classes": state["classes"],
        "embedding_dim": int(state["linear_head"]["weight"].shape[1]),
        "input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC", "size": size,
                  "color": "RGB", "normalization": "inside the graph"},
        "outputs": ["embedding", "logits"],
        "default_precision": "int8",
        "encoders": {"fp32": "encoder_fp32.onnx", "int8": "encoder_int8.onnx"},
        "head": "head.npz",
        "pca": "pca.npy",
        "gallery": {
            "ids": "gallery/ids.npy", "labels": "gallery/labels.npy",
            "thumbnails": "gallery/thumbnails.npy",
            "embeddings": {p: f"gallery/embeddings_{p}.npy" for p in runtimes},
            "runtimes": runtimes,
            "source": f"{cfg.data or state['config']['data']} (train split)",
        },
        "checkpoint": {"file": Path(cfg.checkpoint).name, "epoch": state["epoch"],
                       "config_digest": config_digest(state),
                       "weights_digest": weights_digest(state),
                       "eval": {k: v for k, v in state.get("eval", {}).items()
                                if isinstance(v, int | float | str)}},
        "export": {k: v for k, v in vars(cfg).items() if k not in ("checkpoint", "out")} | {
            "seconds": round(seconds, 1)},
        "metrics": report,
    }
