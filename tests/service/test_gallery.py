"""Gallery durability over real restarts (SIGTERM and kill -9), and the index itself."""

import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.gallery import Gallery
from tests.service.conftest import API_KEY, Server


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def top_id(url: str, vec: np.ndarray) -> str:
    r = httpx.post(url + "/v1/search", json={"embeddings": [vec.tolist()], "k": 1})
    return r.json()["results"][0][0]["id"]


def test_adds_and_deletes_survive_restart_and_kill_9(bundle_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    v = unit(3, seed=1)
    key = {"x-api-key": API_KEY}
    srv = Server(bundle_dir, data).start()
    add = {"items": [{"id": "a", "label": "mine", "embedding": v[0].tolist()},
                     {"id": "b", "embedding": v[1].tolist()}]}
    assert httpx.post(srv.url + "/v1/gallery", json=add, headers=key).status_code == 200
    assert "Application shutdown complete" in srv.stop(signal.SIGTERM)  # graceful

    srv = Server(bundle_dir, data).start()
    assert top_id(srv.url, v[0]) == "a" and top_id(srv.url, v[1]) == "b"
    add_c = {"items": [{"id": "c", "embedding": v[2].tolist()}]}
    assert httpx.post(srv.url + "/v1/gallery", json=add_c, headers=key).status_code == 200
    assert httpx.delete(srv.url + "/v1/gallery/b", headers=key).status_code == 200
    srv.stop(signal.SIGKILL)  # no chance to flush anything after the acknowledgement

    srv = Server(bundle_dir, data).start()
    try:
        assert top_id(srv.url, v[2]) == "c" and top_id(srv.url, v[0]) == "a"
        assert top_id(srv.url, v[1]) != "b"
        size = httpx.get(srv.url + "/v1/gallery").json()["size"]
        assert size == 200 + 2  # bundle gallery + a, c
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_index_kinds_find_exact_matches_and_honour_deletes(tmp_path: Path, kind: str) -> None:
    emb = unit(500, seed=2)
    g = Gallery(512, tmp_path / "j.jsonl", kind)
    g.load([f"id{i}" for i in range(500)], [None] * 500, emb)
    hits = g.search(emb[:20], 3)
    assert [h[0].id for h in hits] == [f"id{i}" for i in range(20)]
    assert g.delete("id5") and not g.delete("id5")
    assert all(h.id != "id5" for h in g.search(emb[5:6], 10)[0])
    fresh = unit(1, seed=99)
    g.add(["id7"], ["moved"], fresh)  # re-adding an id replaces its vector and label
    assert len(g) == 499
    hit = g.search(fresh, 1)[0][0]
    assert (hit.id, hit.label) == ("id7", "moved") and hit.score == pytest.approx(1, abs=1e-5)
    old = g.search(emb[7:8], 1)[0][0]  # the old vector is gone from the index
    assert old.id != "id7" and old.score < 0.5


def test_torn_journal_line_is_ignored(tmp_path: Path) -> None:
    emb = unit(2, seed=3)
    journal = tmp_path / "j.jsonl"
    g = Gallery(512, journal)
    g.load([], [], np.zeros((0, 512), np.float32))
    g.add(["x"], ["l"], emb[:1])
    with journal.open("a") as f:
        f.write('{"op": "add", "id": "y", "embedd')  # the process died mid-write
    again = Gallery(512, journal)
    again.load([], [], np.zeros((0, 512), np.float32))
    assert len(again) == 1 and again.search(emb[:1], 1)[0][0].id == "x"
