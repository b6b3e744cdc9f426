"""A million vectors in the embedded gallery (SQLite + FAISS HNSW, float32): built in process
through the same Gallery class the server uses (the bundle's 50,000 plus 950,000 stored
changes, as if added through the API, in commits of 10,000), stopped (the index snapshot is
written), then served by a real server: restart time from process start to `/readyz`, RSS,
search by embedding p50/p95/p99 over HTTP paired with `/healthz`, and recall@10 against exact
search over the whole million.

Added vectors are the bundle's own embeddings with noise (sigma 0.05, renormalized), queries
stored vectors with a little noise (sigma 0.01), as in benchmarks/parts/gallery_growth.py.

    python -m benchmarks.gallery million --bundle bundles/default
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from simclr_embed.benchmarks.harness import hardware, percentiles, write_result
from simclr_embed.benchmarks.parts.gallery_growth import exact, recall, searches
from simclr_embed.benchmarks.process import ServiceProcess
from simclr_embed.service.bundle import load_bundle, model_id
from simclr_embed.service.gallery import Gallery
from simclr_embed.service.store import Space

log = logging.getLogger("gallery_million")


def noisy(src: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    out = src + rng.normal(0, sigma, src.shape).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def build(bundle_dir: Path, data_dir: Path, total: int, batch: int = 10_000
          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The gallery on disk; (every id, every vector, build figures)."""
    bundle = load_bundle(bundle_dir)
    ids, labels, emb = bundle.gallery("int8")
    space = Space(model_id(bundle.manifest), "int8", emb.shape[1])
    g = Gallery(space, data_dir / "gallery-int8.sqlite3")
    g.load(ids.tolist(), [bundle.classes[y] for y in labels.tolist()], emb)
    rng = np.random.default_rng(0)
    new = noisy(emb[rng.integers(0, len(emb), total - len(emb))], 0.05, rng)
    new_ids = np.array([f"added/{n}" for n in range(len(new))])
    t0 = time.perf_counter()
    for s in tqdm(range(0, len(new), batch), desc="adding", unit="batch"):
        g.add(new_ids[s:s + batch].tolist(), [None] * len(new_ids[s:s + batch]),
              new[s:s + batch])
    added_s = time.perf_counter() - t0
    kind = g.kind
    t0 = time.perf_counter()
    g.close()  # as at SIGTERM: the snapshot of the whole index
    figures = {"index": kind, "add_vectors_per_s": len(new) / added_s,
               "stop_with_snapshot_s": time.perf_counter() - t0,
               "disk_mb": {p.name: p.stat().st_size / 2**20 for p in data_dir.iterdir()}}
    return np.concatenate([ids, new_ids]), np.concatenate([emb, new]), figures


def serve(bundle_dir: Path, data_dir: Path, all_ids: np.ndarray, emb: np.ndarray) -> dict:
    rng = np.random.default_rng(1)
    queries = noisy(emb[rng.integers(0, len(emb), 300)], 0.01, rng)
    want = exact(all_ids, emb, np.ones(len(emb), bool), queries)
    srv = ServiceProcess(bundle_dir, data_dir, data_dir.parent / "server.log")
    t0 = time.perf_counter()
    srv.start(timeout=600)
    out: dict = {"restart_to_readyz_s": time.perf_counter() - t0, "rss_mb": srv.rss_mb()}
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            model = c.get("/v1/model").json()
            searches(c, queries[:30])  # first touches of the pages
            base: list[float] = []
            times, got = searches(c, queries, base=base)
        search, healthz = percentiles(times), percentiles(base)
        out.update(index=model["gallery_index"], size=model["gallery_size"],
                   search=search, healthz=healthz,
                   search_over_healthz_p50_ms=search["p50_ms"] - healthz["p50_ms"],
                   search_over_healthz_paired_p50_ms=float(np.median(np.subtract(times, base))),
                   recall_at_10=recall(got, want), rss_after_searches_mb=srv.rss_mb())
    finally:
        srv.stop()
    return out


QUICK = {"total": 5000, "out": Path("benchmarks/results/quick/gallery_million.json")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--total", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gallery_million.json"))


def run(args: argparse.Namespace) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        data = Path(tmp) / "data"
        all_ids, emb, built = build(args.bundle, data, args.total)
        log.info("built: %s", built)
        served = serve(args.bundle, data, all_ids, emb)
        log.info("served: %s", {k: v for k, v in served.items() if not isinstance(v, dict)})
    write_result(args.out, {"benchmark": "gallery_million", "hardware": hardware(),
                            "bundle": args.bundle.name, "vectors": args.total,
                            "build": built, "serve": served})
