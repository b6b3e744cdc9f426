"""The design's systems tricks against plain SimCLR at the same wall-clock budget (#37): the
momentum encoder with its queue of negatives (MoCo) and multi-crop, at two batch sizes and
several seeds; and mixup in the linear probe, on the plain runs' frozen features.

The protocol is the recipe comparison's: one stratified subset of the training split, the
same recipe and seed for every variant, kNN (k=200) and the frozen linear probe on the whole
test split. Every run gets --time-budget-s: after its second epoch the epoch count shrinks to
what fits, so a slower step buys fewer epochs. Variants run interleaved, seed by seed.

    python -m benchmarks.train tricks                  # ~35 min on 2 cores
    python -m benchmarks.train tricks --quick          # smoke-tested

Writes benchmarks/results/train_tricks.json and train_tricks.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from statistics import mean, pstdev

import torch

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.training.augment import Normalize
from simclr_embed.training.checkpoint import load_checkpoint, model_from_checkpoint
from simclr_embed.training.data import load_dataset, stratified_subset
from simclr_embed.training.evaluate import extract_features, linear_probe
from simclr_embed.training.train import RECIPES, TrainConfig, train

log = logging.getLogger("benchmarks.train_tricks")

VARIANTS: dict[str, dict] = {
    "simclr": {},
    "momentum+queue": {"momentum_encoder": 0.99, "queue_size": 1024},
    "multi-crop 2x4": {"multi_crop": "2,4"},
}
QUICK = {"train_per_class": 4, "batch_sizes": "16", "seeds": 1, "budget_s": 1.0,
         "test_per_class": 5, "out": Path("benchmarks/results/quick/train_tricks.json")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--recipe", default="cifar", choices=tuple(RECIPES))
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=None, help="default: the whole split")
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=90.0, help="training seconds per run")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--mixup", type=float, default=0.2, help="the probe's mixup alpha")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train_tricks.json"))


def run_one(args: argparse.Namespace, variant: str, batch: int, seed: int, out: Path) -> dict:
    cfg = TrainConfig.recipe(
        args.recipe, data=args.data, out_dir=str(out), train_per_class=args.train_per_class,
        test_per_class=args.test_per_class, epochs=100, batch_size=batch, warmup_epochs=1,
        knn_every=0, checkpoint_every=100, seed=seed, time_budget_s=args.budget_s,
        **VARIANTS[variant])
    start = time.perf_counter()
    ckpt = train(cfg)
    wall = time.perf_counter() - start
    state = load_checkpoint(ckpt)
    epochs = [m for m in state["metrics"] if "epoch_s" in m]
    steps = sum(round(m["epoch_s"] * m["images_per_s"] / batch) for m in epochs)
    train_s = sum(m["epoch_s"] for m in epochs)
    return {"variant": variant, "batch_size": batch, "seed": seed,
            "knn_top1": state["eval"]["knn_top1"], "linear_top1": state["eval"]["linear_top1"],
            "epochs": len(epochs), "steps": steps, "train_s": train_s,
            "step_s": train_s / max(1, steps), "final_loss": epochs[-1]["loss"],
            "wall_s": wall, "checkpoint": ckpt}


def probe_with_mixup(ckpt: Path, args: argparse.Namespace, seed: int) -> float:
    """Linear top-1 of the frozen probe trained with mixup on the run's own features."""
    state = load_checkpoint(ckpt)
    model = model_from_checkpoint(state)
    norm = Normalize(state["normalization"]["mean"], state["normalization"]["std"], "cpu")
    train_set, test_set = load_dataset(args.data, 32)
    train_set = stratified_subset(train_set, args.train_per_class, seed)
    test_set = stratified_subset(test_set, args.test_per_class, seed)
    feats = [extract_features(model.encoder, s.images, norm.uint8, torch.device("cpu"),
                              autocast_dtype=torch.bfloat16) for s in (train_set, test_set)]
    probe = linear_probe(feats[0], torch.from_numpy(train_set.labels), feats[1],
                         torch.from_numpy(test_set.labels), len(train_set.classes),
                         seed=seed, mixup=args.mixup)
    return probe.top1


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for (variant, batch) in sorted({(r["variant"], r["batch_size"]) for r in rows}):
        runs = [r for r in rows if r["variant"] == variant and r["batch_size"] == batch]
        row: dict = {"variant": variant, "batch_size": batch, "n": len(runs)}
        for key in ("knn_top1", "linear_top1", "epochs", "step_s", "linear_mixup_top1"):
            values = [r[key] for r in runs if key in r]
            if values:
                row[key] = {"mean": mean(values), "std": pstdev(values)}
        out.append(row)
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({s["batch_size"] for s in summary})
    variants = list(dict.fromkeys(s["variant"] for s in summary))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric in zip(axes, ("knn_top1", "linear_top1"), strict=True):
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            cells = [next(s for s in summary if s["variant"] == variant
                          and s["batch_size"] == b) for b in batches]
            ax.bar([j + i * width for j in range(len(batches))],
                   [c[metric]["mean"] for c in cells], width,
                   yerr=[c[metric]["std"] for c in cells], capsize=3, label=variant)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))],
                      [f"batch {b}" for b in batches])
        ax.set_title(metric.replace("_top1", " top-1 (%)"))
    axes[0].legend(fontsize=8)
    fig.suptitle("Same wall-clock budget per run: mean and spread over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> None:
    variants = args.variants.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                for variant in variants:  # interleaved: drift spreads over all variants
                    row = run_one(args, variant, batch, seed,
                                  Path(tmp) / f"{variant}-{batch}-{seed}".replace(" ", "_"))
                    if variant == "simclr":
                        row["linear_mixup_top1"] = probe_with_mixup(row["checkpoint"], args,
                                                                    seed)
                    row.pop("checkpoint")
                    rows.append(row)
                    log.info("%s", json.dumps(row))
    summary = summarize(rows)
    result = {"benchmark": "train_tricks", "recipe": args.recipe,
              "budget_s_per_run": args.budget_s, "train_images": args.train_per_class * 10,
              "test_images": "the whole test split" if args.test_per_class is None
              else args.test_per_class * 10, "knn_k": 200, "probe_mixup_alpha": args.mixup,
              "variants": {v: VARIANTS[v] for v in variants}, "summary": summary, "runs": rows,
              "hardware": hardware()}
    path = write_result(args.out, result)
    plot(summary, path.with_suffix(".png"))
    for s in summary:
        log.info("%-16s batch %3d: kNN %.2f +- %.2f, linear %.2f +- %.2f, %.2f s/step",
                 s["variant"], s["batch_size"], s["knn_top1"]["mean"], s["knn_top1"]["std"],
                 s["linear_top1"]["mean"], s["linear_top1"]["std"], s["step_s"]["mean"])
