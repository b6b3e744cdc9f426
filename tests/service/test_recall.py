"""service/recall.py on its own: the exact ground truth against brute force, and the efSearch
it settles on against recall measured here by hand, on random vectors (the data HNSW finds
hard) and on clustered ones (the data it finds easy)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from simclr_embed.service import recall
from simclr_embed.service.index import MemoryIndex


def hnsw(emb: np.ndarray, m: int = 4) -> MemoryIndex:
    mem = MemoryIndex(faiss.IndexIDMap2(faiss.IndexHNSWFlat(emb.shape[1], m,
                                                            faiss.METRIC_INNER_PRODUCT)), "hnsw")
    mem.add([f"v{n}" for n in range(len(emb))], [None] * len(emb), emb)
    return mem


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_top_is_brute_force_over_the_live_rows(monkeypatch) -> None:
    monkeypatch.setattr(recall, "CHUNK", 300)  # several chunks, the last one short
    emb = unit(np.random.default_rng(0).standard_normal((1000, 16)))
    mem = hnsw(emb)
    rows = np.fromiter(mem.rows, np.int64, len(mem.rows))
    queries = emb[:7]
    got, _ = recall._exact_top(mem, rows, queries)
    want = np.argsort(-(queries @ emb.T), axis=1)[:, :recall.K]
    assert [sorted(g) for g in got.tolist()] == [sorted(w) for w in want.tolist()]


@pytest.mark.parametrize("clustered", [False, True])
def test_what_it_measured_holds_on_fresh_queries(clustered: bool) -> None:
    """Recall@10 at the efSearch it chose, measured again here by brute force on other queries
    near stored vectors: within sampling noise of what it reported, and at the target unless
    it said exact search must serve."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((20, 32))[rng.integers(0, 20, 4000)] if clustered else 0
    emb = unit(base + (0.3 if clustered else 1.0) * rng.standard_normal((4000, 32)))
    mem = hnsw(emb)
    got = recall.measure(mem, 0.95, 16)
    queries = unit(emb[rng.choice(4000, 300, replace=False)]
                   + rng.normal(0, recall.NOISE, (300, 32)))
    want = np.argsort(-(queries @ emb.T), axis=1)[:, :10]
    found = mem._search(queries, 10, mem._live(), got.ef_search)[1]
    by_hand = np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want, strict=True)])
    assert abs(by_hand - got.recall_at_10) < 0.05, (by_hand, got)
    assert got.recall_at_10 >= 0.95 or got.exact_cheaper, got
    assert got.size == 4000 and got.ef_search in recall.EF_LADDER
