"""Training recipes compared on the CPU at one small budget before a GPU lease spends its
minutes on one: the same seed, the same stratified subset of the training split, the same
batch size and epochs, kNN (k=200, cosine) and the frozen linear probe on the whole test split.

    python -m benchmarks.recipes --data ../shared/data/cifar10      # ~12 min on 2 cores

Writes benchmarks/results/recipes_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.training.train import RECIPES, TrainConfig, train

log = logging.getLogger("recipes")


def run_recipe(name: str, args: argparse.Namespace) -> dict:
    out = args.work / name
    cfg = TrainConfig.recipe(
        name, data=args.data, out_dir=str(out), train_per_class=args.train_per_class,
        epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=1, knn_every=0,
        checkpoint_every=args.epochs, seed=args.seed,
    )
    start = time.perf_counter()
    train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"recipe": name, "knn_top1": summary["knn_top1"],
            "linear_top1": summary["linear_top1"], "final_loss": rows[-1]["loss"],
            "wall_s": round(time.perf_counter() - start, 1),
            "settings": RECIPES[name]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--recipes", nargs="+", default=["solo", "cifar"], choices=tuple(RECIPES))
    p.add_argument("--train-per-class", type=int, default=250)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/recipes"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/recipes_cpu.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = [run_recipe(name, args) for name in args.recipes]
    budget = {k: getattr(args, k) for k in ("train_per_class", "epochs", "batch_size", "seed")}
    write_result(args.out, {"benchmark": "training_recipes_cpu", "budget": budget | {
        "test_images": "the whole test split", "knn_k": 200}, "runs": rows,
        "hardware": hardware()})
    for row in rows:
        log.info("%s: kNN %.2f %%, linear %.2f %%, %.0f s", row["recipe"], row["knn_top1"],
                 row["linear_top1"], row["wall_s"])


if __name__ == "__main__":
    main()
