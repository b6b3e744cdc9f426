"""Gallery search and writes, embedded (SQLite + FAISS exact / HNSW) against PostgreSQL +
pgvector (HNSW), at 50k and 500k vectors: build time, search p50/p95/p99 for one query (k=10),
recall@10 against exact search, and add throughput (durable commits of 64 items).

The 50k vectors are the bundle's real gallery embeddings; 500k are those plus nine noisy copies
of each (sigma 0.05, renormalized), so the data keeps its real cluster structure. Queries are
200 real test-image embeddings from the bundle's encoder.

    python -m benchmarks.gallery search --bundle bundles/released
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from simclr_embed.benchmarks.harness import hardware, percentiles, write_result
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.gallery import Gallery
from simclr_embed.service.runtime import make_session, run_batches
from simclr_embed.service.store import Space

log = logging.getLogger("gallery_bench")


def vectors(bundle_dir: Path, data: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    bundle = load_bundle(bundle_dir)
    _, _, emb = bundle.gallery("int8")
    rng = np.random.default_rng(0)
    copies = [emb] + [emb + rng.normal(0, 0.05, emb.shape).astype(np.float32)
                      for _ in range(max(0, n // len(emb) - 1))]
    base = np.concatenate(copies)[:n]
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    from simclr_embed.training.data import load_dataset

    _, test = load_dataset(data)
    session = make_session(bundle.encoder_path("int8"))
    queries, _ = run_batches(session, test.images[::50][:200], 64)
    return base.astype(np.float32), queries.astype(np.float32)


def timed_searches(search, queries: np.ndarray, k: int = 10) -> tuple[dict, list[list[str]]]:
    times, ids = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = search(q[None], k)[0]
        times.append((time.perf_counter() - t0) * 1000)
        ids.append([h.id for h in hits])
    return percentiles(times), ids


def recall(ids: list[list[str]], exact: np.ndarray) -> float:
    return float(np.mean([len(set(got) & {f"v{i}" for i in ex}) / len(ex)
                          for got, ex in zip(ids, exact, strict=True)]))


def add_rate(add, dim: int, batches: int = 30) -> float:
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for b in range(batches):
        v = rng.normal(size=(64, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        add([f"new{b}-{i}" for i in range(64)], [None] * 64, v)
    return batches * 64 / (time.perf_counter() - t0)


def run_backend(name: str, make, base: np.ndarray, queries: np.ndarray,
                exact: np.ndarray) -> dict:
    ids = [f"v{i}" for i in range(len(base))]
    t0 = time.perf_counter()
    g = make()
    g.load(ids, [None] * len(base), base)
    build = time.perf_counter() - t0
    latency, got = timed_searches(g.search, queries)
    row = {"backend": name, "n": len(base), "build_s": build, **latency,
           "recall_at_10": recall(got, exact), "adds_per_s": add_rate(g.add, base.shape[1])}
    log.info("%s", row)
    return row


QUICK = {"sizes": [2000], "no_postgres": True,
         "out": Path("benchmarks/results/quick/gallery.json")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000])
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--restart", action="store_true",
                   help="also time a service restart over the bundle (embedded, default index)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gallery.json"))


def run(args: argparse.Namespace) -> None:
    import faiss

    faiss.omp_set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pg_url = None
        if not args.no_postgres:
            import pgserver

            pg = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
            pg_url = pg.get_uri()
        for n in args.sizes:
            base, queries = vectors(args.bundle, args.data, n)
            exact = np.argsort(-(queries @ base.T), axis=1)[:, :10]
            space = Space(f"bench-{n}", "int8", base.shape[1])
            for kind in ("flat", "hnsw"):
                db = Path(tmp) / f"{kind}-{n}.sqlite3"
                rows.append(run_backend(f"embedded {kind}", lambda db=db, kind=kind, sp=space:
                                        Gallery(sp, db, kind, ef_search=args.ef_search),
                                        base, queries, exact))
            if pg_url:
                from simclr_embed.service.pg_gallery import PgGallery

                rows.append(run_backend("pgvector hnsw", lambda sp=space: PgGallery(
                    sp, pg_url, ef_search=args.ef_search), base, queries, exact))
        if pg_url:
            pg.cleanup()
    result = {"benchmark": "gallery", "hardware": hardware(), "k": 10, "queries": 200,
              "ef_search": args.ef_search, "hnsw_m": 32, "rows": rows}
    if args.restart:
        result["restart"] = restart_times(args.bundle)
    write_result(args.out, result)


def restart_times(bundle: Path, rounds: int = 3) -> dict:
    """Seconds from process start to /readyz, first start (builds and caches the HNSW graph)
    and restarts (read it), with the default settings."""
    from simclr_embed.benchmarks.process import ServiceProcess

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds + 1):
            srv = ServiceProcess(bundle, Path(tmp) / "data", Path(tmp) / "log")
            t0 = time.perf_counter()
            srv.start()
            times.append(time.perf_counter() - t0)
            srv.stop()
    return {"first_start_s": times[0], "restart_s": times[1:],
            "restart_median_s": statistics.median(times[1:])}
