"""Duplicates and the gallery map (#36) on a bundle's gallery: the near-duplicate threshold
calibrated on the test split (export/near_duplicates.py: precision and recall held out, per
transformation), every pair of the whole gallery at that threshold (the exact range search of
service/duplicates.py: seconds and peak memory, rounds), and the map's projection of at most
20,000 of its vectors (PCA; UMAP too where umap-learn is installed).

    python -m benchmarks.gallery duplicates --bundle bundles/default    # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

import numpy as np

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.export.near_duplicates import calibrate_bundle
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.duplicates import find_pairs, groups
from simclr_embed.service.gallery_map import MAX_POINTS, project, thin

log = logging.getLogger("benchmarks.gallery_duplicates")

QUICK = {"test_per_class": 10, "rounds": 1,
         "out": Path("benchmarks/results/quick/duplicates.json")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/duplicates.json"))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def all_pairs(vectors: np.ndarray, threshold: float, rounds: int) -> dict:
    runs, before = [], rss_mb()
    pairs: list = []
    for _ in range(rounds):
        start = time.perf_counter()
        pairs = find_pairs(vectors, None, threshold)
        runs.append(time.perf_counter() - start)
    found = groups(pairs, len(vectors))
    return {"vectors": len(vectors), "threshold": threshold, "seconds": runs,
            "seconds_median": float(np.median(runs)), "pairs": len(pairs),
            "exact_pairs": sum(p.kind == "exact" for p in pairs), "groups": len(found),
            "largest_group": max(map(len, found), default=0),
            "peak_rss_mb_before": before, "peak_rss_mb_after": rss_mb()}


def projections(vectors: np.ndarray) -> dict:
    ids = [str(i) for i in range(len(vectors))]
    rows = thin(ids, MAX_POINTS)
    start = time.perf_counter()
    _, method = project(vectors[rows])
    return {"points": len(rows), "method": method, "seconds": time.perf_counter() - start}


def run(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    found = calibrate_bundle(bundle, args.data, args.precision, args.test_per_class)
    vectors = bundle.gallery(args.precision)[2]
    pairs = all_pairs(vectors, found["threshold"], args.rounds)
    result = {"benchmark": "duplicates", "bundle": bundle.manifest["checkpoint"]["file"],
              "precision": args.precision, "calibration": found, "gallery_pairs": pairs,
              "map": projections(vectors), "hardware": hardware()}
    write_result(args.out, result)
    held = found["held_out"]
    log.info("threshold %.4f: held out precision %.3f, recall %.3f; %d vectors: %d pairs in "
             "%.1f s", found["threshold"], held["precision"], held["recall"], len(vectors),
             pairs["pairs"], pairs["seconds_median"])
