"""The GPU reference run, sized to one leased call: train a recipe for 500 epochs (a wall-clock
budget trims the epoch count if the GPU is slower than planned), evaluate (kNN, the fast probe
and the crop + flip probe), export FP32 + INT8, and write summary.json, the curves and the
released weights (models/simclr-resnet18-cifar10.safetensors).

    python -m benchmarks.archive.gpu_reference --data .data/cifar10 --out $OUT --deadline-s 560

`--ablation` spends a second call on the seed's grid (tau {0.05, 0.1, 0.2} x head depth {1, 2},
ABLATION_EPOCHS each on the whole training split, with alignment and uniformity per cell), cell
by cell until the deadline; `--smoke` runs either path on a few hundred images (CPU-sized) to
check it before a lease.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.export.build import ExportConfig, build_bundle
from simclr_embed.training.ablate import AblateConfig, run_ablation, write_report
from simclr_embed.training.checkpoint import load_checkpoint
from simclr_embed.training.train import RECIPES, TrainConfig, train
from simclr_embed.training.weights import save_weights

log = logging.getLogger("gpu_reference")

WEIGHTS_NAME = "simclr-resnet18-cifar10.safetensors"
# What evaluation and export cost after training on one H200 (measured: docs/benchmarks.md).
RESERVE_S = 170
PART_BYTES = 15 * 2**20
EPOCHS = 500  # the literature's 500-epoch point (dkobak: 90.3 % kNN)
ABLATION_EPOCHS = 30


def run_config(recipe: str, data: str, out_dir: str, budget_s: float | None,
               smoke: bool) -> TrainConfig:
    """The named recipe (training/train.py RECIPES) for EPOCHS at batch 512 with the
    literature's 100-epoch crop + flip probe; the time budget trims the epoch count."""
    cfg = TrainConfig.recipe(
        recipe, data=data, out_dir=out_dir, epochs=EPOCHS, batch_size=512, warmup_epochs=10,
        compile=True, knn_every=50, checkpoint_every=25, probe_aug_epochs=100,
        time_budget_s=budget_s,
    )
    if smoke:
        cfg.train_per_class, cfg.test_per_class, cfg.epochs = 30, 10, 3
        cfg.batch_size, cfg.warmup_epochs, cfg.knn_every, cfg.probe_aug_epochs = 64, 1, 2, 2
        cfg.compile = torch.cuda.is_available()
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=".data/cifar10")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-reference"))
    p.add_argument("--deadline-s", type=float, default=560,
                   help="the whole script must end within this many seconds")
    p.add_argument("--recipe", default="cifar", choices=tuple(RECIPES),
                   help="training/train.py RECIPES (the released model used 'solo')")
    p.add_argument("--smoke", action="store_true", help="a few hundred images, to test the path")
    p.add_argument("--ablation", action="store_true", help="the tau x head-depth grid instead")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    torch._dynamo.config.suppress_errors = True  # a compile failure falls back to eager
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    shutil.rmtree(args.work, ignore_errors=True)
    if args.ablation:
        return ablation(args, start)
    budget = None if args.smoke else args.deadline_s - RESERVE_S
    cfg = run_config(args.recipe, args.data, str(args.work / "run"), budget, args.smoke)
    ckpt = train(cfg)
    train_s = time.perf_counter() - start
    state = load_checkpoint(ckpt)
    weights = save_weights(state, args.work / WEIGHTS_NAME, extra={"hardware": hardware()})
    log.info("weights: %s (%.1f MB)", weights, weights.stat().st_size / 1e6)
    split_file(weights, args.out, PART_BYTES)  # back home even if the export runs out of time
    summary = run_summary(state, cfg, start, train_s, args.smoke)
    write_result(args.out / "summary.json", summary)
    pack_curves(args.work, args.out / "curves.tar.gz", None)
    export_cfg = ExportConfig(str(ckpt), out=str(args.work / "bundle"), latency_rounds=3,
                              gallery_per_class=30 if args.smoke else 1000,
                              test_per_class=10 if args.smoke else None,
                              tolerance=5.0 if args.smoke else 2.0)
    bundle = build_bundle(export_cfg)
    report = json.loads((bundle / "report.json").read_text())
    summary = run_summary(state, cfg, start, train_s, args.smoke) | {
        "int8_linear_top1": report["int8"]["linear_top1"],
        "fp32_linear_top1_onnx": report["fp32"]["linear_top1"],
        "int8_knn_top1": report["int8"]["knn_top1"],
        "int8_cosine_mean": report["cosine_mean"],
        "int8_top10_overlap": report["top10_overlap"],
        "export_gallery_images": report["gallery_images"],
    }
    write_result(args.out / "summary.json", summary)
    pack_curves(args.work, args.out / "curves.tar.gz", bundle)
    log.info("summary: %s", {k: v for k, v in summary.items() if k not in ("config", "hardware")})


def ablation(args: argparse.Namespace, start: float) -> None:
    """The grid one cell at a time, stopping when the next cell would not end before the
    deadline (judged by the slowest cell so far); the report is rewritten after each cell."""
    cfg = AblateConfig(data=args.data, out=str(args.work / "ablate"), recipe=args.recipe,
                       epochs=2 if args.smoke else ABLATION_EPOCHS,
                       train_per_class=20 if args.smoke else None,
                       test_per_class=10 if args.smoke else None,
                       batch_size=64 if args.smoke else 512, compile=torch.cuda.is_available(),
                       max_cells=1)
    args.out.mkdir(parents=True, exist_ok=True)
    cells, slowest = [], 0.0
    for _ in range(len(cfg.temperatures) * len(cfg.head_layers)):
        t0 = time.perf_counter()
        if t0 - start + slowest > args.deadline_s - 20:
            log.warning("stopping before the deadline after %d cells", len(cells))
            break
        cells = run_ablation(cfg)
        slowest = max(slowest, time.perf_counter() - t0)
        write_report(cfg, cells)
        for name in ("ablation.json", "ablation.md", "ablation_heatmap.png",
                     "ablation_scatter.png"):
            if (Path(cfg.out) / name).exists():
                shutil.copy(Path(cfg.out) / name, args.out / name)
    log.info("ablation: %d cells in %.0f s", len(cells), time.perf_counter() - start)


def run_summary(state: dict, cfg: TrainConfig, start: float, train_s: float,
                smoke: bool) -> dict:
    epochs = [m for m in state["metrics"] if "images_per_s" in m]
    steady = epochs[1:] or epochs  # the first epoch pays for torch.compile
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "epochs": state["config"]["epochs"],
        "epochs_planned": 3 if smoke else EPOCHS,
        "train_images": state["eval"]["train_images"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "train_seconds": round(sum(m["epoch_s"] for m in epochs), 1),
        "train_and_eval_seconds": round(train_s, 1),
        "images_per_second": round(sum(m["images_per_s"] for m in steady) / len(steady), 1),
        "knn_top1": state["eval"]["knn_top1"],
        "linear_top1": state["eval"].get("linear_aug_top1", state["eval"]["linear_top1"]),
        "linear_top1_frozen_probe": state["eval"]["linear_top1"],
        "linear_protocol": state["eval"].get("linear_aug_protocol"),
        "config": asdict(cfg) | {"epochs": state["config"]["epochs"]},
        "hardware": hardware(),
    }


def pack_curves(work: Path, path: Path, bundle: Path | None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in ("metrics.jsonl", "metrics.csv", "probe.jsonl", "summary.json", "loss.png",
                     "knn.png", "probe.png", "config.json"):
            if (work / "run" / name).exists():
                tar.add(work / "run" / name, arcname=f"run/{name}")
        for name in ("report.json", "report.md", "manifest.json"):
            if bundle is not None:
                tar.add(bundle / name, arcname=f"export/{name}")


def split_file(path: Path, out: Path, part_bytes: int) -> None:
    """`path` as out/weights.part00, part01, ...: the return channel takes files < 16 MiB."""
    out.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes()
    for i, start in enumerate(range(0, len(data), part_bytes)):
        (out / f"weights.part{i:02d}").write_bytes(data[start : start + part_bytes])


if __name__ == "__main__":
    main()
