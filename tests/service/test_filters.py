"""Search filters and metadata against exact answers: the embedded store (flat and HNSW, in
process on a real SQLite file), PostgreSQL + pgvector (a real server from pgserver), and over
HTTP. Deleted items are never returned, and a filter matching 1 % of the gallery still gives k
matching neighbours (the under-return pgvector users report from filtering after an HNSW scan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simclr_embed.service.gallery import Gallery
from simclr_embed.service.store import Filter, Space
from tests.support.gallery_chaos import KEY, unit

SPACE = Space("model-f", "int8", 512)
N = 6000


def corpus(n_items: int = N) -> tuple[list[str], list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(21)
    ids = [f"i{n}" for n in range(n_items)]
    labels = [("rare" if n % 100 == 0 else f"c{n % 7}") for n in range(n_items)]
    metas = [{"shop": int(rng.integers(0, 4)), "colour": ["red", "blue"][n % 2]}
             for n in range(n_items)]
    return ids, labels, unit(n_items, seed=22), metas


def exact(emb: np.ndarray, keep: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    sims = queries @ emb.T
    sims[:, ~keep] = -np.inf
    top = np.argsort(-sims, axis=1)[:, :k]
    return [{int(n) for n in row if keep[n]} for row in top]


def recall(got, want: list[set[int]]) -> float:
    return float(np.mean([len({int(h.id[1:]) for h in row} & w) / max(1, len(w))
                          for row, w in zip(got, want, strict=True)]))


def check_store(search, delete, emb, labels, metas) -> None:
    queries = emb[:30] + np.random.default_rng(23).normal(0, 0.02, (30, 512)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    labels, shop = np.array(labels), np.array([m["shop"] for m in metas])
    colour = np.array([m["colour"] for m in metas])
    cases = [(Filter.of("rare", None), labels == "rare"),  # 1 % of the gallery
             (Filter.of(["c1", "c2"], None), np.isin(labels, ["c1", "c2"])),
             (Filter.of(None, {"shop": [0, 3], "colour": "red"}),
              np.isin(shop, [0, 3]) & (colour == "red")),
             (Filter.of("c3", {"colour": "blue"}), (labels == "c3") & (colour == "blue"))]
    for f, keep in cases:
        got = search(queries, 10, f)
        assert all(len(row) == 10 for row in got), f  # no under-return
        assert all(keep[int(h.id[1:])] for row in got for h in row), f
        assert recall(got, exact(emb, keep, queries, 10)) >= 0.99, f
    assert search(queries, 10, Filter.of("no-such-label", None)) == [[] for _ in queries]
    gone = [f"i{n}" for n in range(0, len(emb), 200)]  # half of the rare ones
    delete(gone)
    keep = (labels == "rare") & ~np.isin(np.arange(len(emb)), [int(i[1:]) for i in gone])
    got = search(queries, 10, Filter.of("rare", None))
    assert not {h.id for row in got for h in row} & set(gone)
    assert recall(got, exact(emb, keep, queries, 10)) >= 0.99
    plain = search(emb[:5], 10, None)
    assert not {h.id for row in plain for h in row} & set(gone)
    assert plain[1][0].id == "i1" and plain[1][0].metadata == metas[1]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_embedded_filters_match_exact_filtered_search(kind: str, tmp_path: Path) -> None:
    ids, labels, emb, metas = corpus()
    g = Gallery(SPACE, tmp_path / "g.sqlite3", kind)
    g.load(ids[:1000], labels[:1000], emb[:1000])  # the bundle's part has no metadata
    g.add(ids[:1000], labels[:1000], emb[:1000], None, metas[:1000])  # then gets it
    for start in range(1000, N, 1000):
        g.add(ids[start:start + 1000], labels[start:start + 1000], emb[start:start + 1000],
              None, metas[start:start + 1000])
    check_store(g.search, g.delete, emb, labels, metas)
    assert g.get("i3")[2] == metas[3]
    again = Gallery(SPACE, tmp_path / "g.sqlite3", kind)  # a restart keeps the metadata
    again.load(ids[:1000], labels[:1000], emb[:1000])
    assert again.get("i3")[2] == metas[3] and again.get("i200") is None


@pytest.mark.slow
def test_pgvector_filters_match_exact_filtered_search(pg_url) -> None:
    from simclr_embed.service.pg_gallery import PgGallery

    ids, labels, emb, metas = corpus(2000)  # each upsert also inserts into the HNSW graph
    g = PgGallery(SPACE, pg_url)
    g.load(ids[:1], labels[:1], emb[:1])
    g.add(ids, labels, emb, None, metas)
    check_store(g.search, g.delete, emb, labels, metas)
    assert g.get("i3")[2] == metas[3]


def test_filters_and_metadata_over_http(client) -> None:
    v = unit(3, seed=24)
    items = [{"id": f"m/{n}", "label": "meta", "embedding": v[n].tolist(),
              "metadata": {"sku": f"A-{n}", "stock": n}} for n in range(3)]
    assert client.post("/v1/gallery", json={"items": items}, headers=KEY).status_code == 200
    assert client.get("/v1/gallery/m/1").json()["metadata"] == {"sku": "A-1", "stock": 1}
    body = {"embeddings": [v[0].tolist()], "k": 5, "filter": {"metadata": {"stock": [1, 2]}}}
    hits = client.post("/v1/search", json=body).json()["results"][0]
    assert {h["id"] for h in hits} == {"m/1", "m/2"}
    assert {h["metadata"]["sku"] for h in hits} == {"A-1", "A-2"}
    body["filter"] = {"label": "meta", "colour": "red"}  # an unknown filter field
    r = client.post("/v1/search", json=body)
    assert r.status_code == 422 and "colour" in r.json()["error"]["message"]
    nested = {"items": [{"id": "m/x", "embedding": v[0].tolist(), "metadata": {"a": {"b": 1}}}]}
    assert client.post("/v1/gallery", json=nested, headers=KEY).status_code == 422
    for n in range(3):
        client.delete(f"/v1/gallery/m/{n}", headers=KEY)


# One filter meaning in both stores (docs/gallery.md, "Filters"): numbers by value, booleans
# only themselves, strings exactly, null equals null, a list any of, a missing key never.
RULE_ITEMS = {"int1": {"v": 1}, "float1": {"v": 1.0}, "true": {"v": True}, "str1": {"v": "1"},
              "half": {"v": 1.5}, "null": {"v": None}, "no-v": {"w": 1}, "int0": {"v": 0},
              "false": {"v": False}, "int100": {"v": 100}, "float100": {"v": 1e2},
              "big": {"v": 2**60}}
RULE_CASES = [
    ({"v": 1}, {"int1", "float1"}),
    ({"v": 1.0}, {"int1", "float1"}),
    ({"v": True}, {"true"}),
    ({"v": "1"}, {"str1"}),
    ({"v": [1, "1"]}, {"int1", "float1", "str1"}),
    ({"v": [True, False]}, {"true", "false"}),
    ({"v": 0}, {"int0"}),
    ({"v": False}, {"false"}),
    ({"v": None}, {"null"}),
    ({"v": 100.0}, {"int100", "float100"}),
    ({"v": 1.5}, {"half"}),
    ({"v": 2}, set()),
    ({"v": float(2**60)}, set()),  # sent as 1.152921504606847e+18: another number
    ({"v": 2**60}, {"big"}),
    ({"w": 1}, {"no-v"}),
    ({"w": 1, "v": 1}, set()),
]


def rule_hits(add, search) -> list[set[str]]:
    ids = list(RULE_ITEMS)
    emb = unit(len(ids), seed=31)
    add(ids, [None] * len(ids), emb, None, list(RULE_ITEMS.values()))
    return [{h.id for h in search(emb[:1], 50, Filter.of(None, f))[0]} for f, _ in RULE_CASES]


@pytest.mark.parametrize("store", ["embedded", "pgvector"])
def test_one_filter_meaning_in_every_store(store: str, tmp_path: Path, request) -> None:
    """The same table of values and filters gives the same items in both stores (before, the
    embedded store told 1 from 1.0 and pgvector did not)."""
    space = Space("model-rule", "int8", 512)
    if store == "embedded":
        g = Gallery(space, tmp_path / "g.sqlite3", "flat")
    else:
        from simclr_embed.service.pg_gallery import PgGallery

        g = PgGallery(space, request.getfixturevalue("pg_url"))
    g.load([], [], np.zeros((0, 512), np.float32))
    got = rule_hits(g.add, g.search)
    g.close()
    assert got == [want for _, want in RULE_CASES]


def test_a_nested_filter_value_is_refused(client) -> None:
    body = {"embeddings": [unit(1, seed=1)[0].tolist()], "k": 5,
            "filter": {"metadata": {"a": {"b": 1}}}}
    r = client.post("/v1/search", json=body)
    assert r.status_code == 422 and "metadata" in r.json()["error"]["message"]
