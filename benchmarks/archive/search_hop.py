"""What a search by vector pays for running in a worker thread rather than on the event loop
(service/engine.py, Engine.search): one embedded gallery (SQLite + FAISS HNSW, 200,000 vectors:
the bundle's 50,000 and 150,000 noisy copies), the same queries awaited both ways from one
event loop, interleaved query by query so that drift cancels out.

The search itself is the same either way; what differs is the wait for the worker thread to
wake, the future's result coming back through the loop, and the cache a second core starts
with.

    python -m benchmarks.search_hop --bundle bundles/default
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from simclr_embed.benchmarks.harness import hardware, percentiles, write_result
from simclr_embed.benchmarks.parts.gallery_million import noisy
from simclr_embed.service.bundle import load_bundle, model_id
from simclr_embed.service.gallery import Gallery
from simclr_embed.service.store import Space

log = logging.getLogger("search_hop")


async def compare(g: Gallery, queries: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Each query both ways, the first way alternating (the second search of a query finds
    its graph nodes in the cache)."""
    times: dict[str, list[float]] = {"on the loop": [], "in a thread": []}

    async def on_loop(q: np.ndarray) -> None:
        g.search(q, 10)

    async def in_thread(q: np.ndarray) -> None:
        await asyncio.to_thread(g.search, q, 10)

    ways = {"on the loop": on_loop, "in a thread": in_thread}
    for r in range(rounds):
        for n, q in enumerate(queries):
            order = list(ways) if (n + r) % 2 else list(ways)[::-1]
            for name in order:
                t0 = time.perf_counter()
                await ways[name](q[None])
                times[name].append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--total", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/search_hop.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bundle = load_bundle(args.bundle)
    ids, _, emb = bundle.gallery("int8")
    rng = np.random.default_rng(0)
    new = noisy(emb[rng.integers(0, len(emb), args.total - len(emb))], 0.05, rng)
    with tempfile.TemporaryDirectory() as tmp:
        g = Gallery(Space(model_id(bundle.manifest), "int8", emb.shape[1]),
                    Path(tmp) / "g.sqlite3", "hnsw")
        g.load(ids.tolist(), [None] * len(ids), emb)
        g.add([f"added/{n}" for n in range(len(new))], [None] * len(new), new)
        queries = noisy(new[rng.integers(0, len(new), 300)], 0.01, rng)
        times = asyncio.run(compare(g, queries, args.rounds))
        g.close()
    out = {k: percentiles(v) for k, v in times.items()}
    hop = np.median(np.array(times["in a thread"]) - np.array(times["on the loop"]))
    log.info("%s; the hop: %.3f ms", out, hop)
    write_result(args.out, {"benchmark": "search_hop", "hardware": hardware(),
                            "bundle": args.bundle.name, "vectors": args.total,
                            "rounds": args.rounds, **out, "hop_p50_ms": float(hop)})


if __name__ == "__main__":
    main()
