"""Gaussian blur on or off at 32x32, same seed and budget: kNN and linear top-1 of each.

    python -m benchmarks.augment_blur --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.training.augment import AugmentConfig
from simclr_embed.training.checkpoint import load_checkpoint
from simclr_embed.training.train import TrainConfig, train

log = logging.getLogger("augment_blur")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/augment_blur_cpu.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = TrainConfig(data=args.data, train_per_class=args.train_per_class,
                       test_per_class=args.test_per_class, epochs=args.epochs, batch_size=128,
                       warmup_epochs=1, knn_every=0)
    rows = []
    for blur_p in (0.0, 0.5):
        with tempfile.TemporaryDirectory() as out:
            cfg = replace(base, out_dir=out, augment=AugmentConfig(blur_p=blur_p))
            state = load_checkpoint(train(cfg))
        rows.append({"blur_p": blur_p, "knn_top1": state["eval"]["knn_top1"],
                     "linear_top1": state["eval"]["linear_top1"],
                     "final_loss": state["metrics"][-1]["loss"]})
        log.info("%s", rows[-1])
    write_result(args.out, {"hardware": hardware(), "seed": base.seed, "epochs": args.epochs,
                            "train_images": 10 * args.train_per_class,
                            "test_images": 10 * args.test_per_class, "results": rows})


if __name__ == "__main__":
    main()
