"""The embedded gallery (SQLite + FAISS): durability under kill -9 with concurrent writers, two
workers that agree, the API (ids with '/', get, listing, bulk delete, limits), and another model's
gallery left alone. Real servers over real HTTP, a real SQLite database."""

import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from simclr_embed.service.gallery import Gallery, GalleryMismatch, SQLiteStore
from simclr_embed.service.store import Space
from tests.support.gallery_chaos import KEY, chaos_rounds, check_ledger, unit
from tests.support.servers import Server

SPACE = Space("model-a", "int8", 512)


def top_id(url: str, vec: np.ndarray) -> str:
    r = httpx.post(url + "/v1/search", json={"embeddings": [vec.tolist()], "k": 1})
    return r.json()["results"][0][0]["id"]


def test_ten_rounds_of_kill_9_lose_nothing_acknowledged(bundle_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ledger = chaos_rounds(lambda: [Server(bundle_dir, data).start()], rounds=10)
    srv = Server(bundle_dir, data).start()
    try:
        check_ledger(srv.url, ledger)
        size = httpx.get(srv.url + "/v1/gallery").json()["size"]
        assert size == 200 + len(ledger.present) + uncertain_adds(srv.url, ledger)
    finally:
        srv.stop()


def uncertain_adds(url: str, ledger) -> int:
    """Items whose add was cut off by the kill but had committed: present, never claimed."""
    ids = []
    after = None
    while True:
        page = httpx.get(url + "/v1/gallery", params={"after": after, "limit": 1000}
                         if after else {"limit": 1000}).json()
        ids += [i["id"] for i in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    mine = [i for i in ids if i.startswith("r")]
    return len([i for i in mine if i not in ledger.present])


def test_two_workers_see_every_acknowledged_change(bundle_dir: Path, tmp_path: Path) -> None:
    """A new connection per request, so the kernel hands requests to both workers; each answer
    names its worker (x-worker), and every check of a change is answered by the worker that did
    not make it."""
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_WORKERS="2").start()
    v = unit(20, seed=5)

    def call(method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, srv.url + path, timeout=30, **kw)  # a fresh connection

    def other_worker(method: str, path: str, than: str, **kw) -> httpx.Response:
        for _ in range(100):  # the kernel picks the worker; ask until the other one answers
            r = call(method, path, **kw)
            if r.headers["x-worker"] != than:
                return r
        raise AssertionError("one worker answered 100 connections in a row")

    try:
        for n in range(20):  # each add lands on some worker; every search must see it
            item = {"items": [{"id": f"w/{n}", "label": "x", "embedding": v[n].tolist()}]}
            r = call("POST", "/v1/gallery", json=item, headers=KEY)
            assert r.status_code == 200
            hit = other_worker("POST", "/v1/search", r.headers["x-worker"],
                               json={"embeddings": [v[n].tolist()], "k": 1})
            assert hit.json()["results"][0][0]["id"] == f"w/{n}"
        for n in range(0, 20, 2):  # a delete on one worker, a 404 on the other
            r = call("DELETE", f"/v1/gallery/w/{n}", headers=KEY)
            assert r.status_code == 200
            again = other_worker("DELETE", f"/v1/gallery/w/{n}", r.headers["x-worker"],
                                 headers=KEY)
            assert again.status_code == 404
            assert other_worker("GET", f"/v1/gallery/w/{n}", r.headers["x-worker"]
                                ).status_code == 404
        sizes = {call("GET", "/v1/gallery").json()["size"] for _ in range(10)}
        assert sizes == {200 + 10}
        metrics = call("GET", "/metrics").text  # whole across workers, whichever answers
        counts = [float(x.split()[-1]) for x in metrics.splitlines()
                  if x.startswith('simclr_embed_requests_total{route="/v1/gallery",')]
        assert sum(counts) == 20 + 10  # 20 adds, 10 listings: both workers' counts
    finally:
        srv.stop()


def test_gallery_api(client) -> None:
    bundle_id = "airplane/0"  # bundle ids contain '/'
    got = client.get(f"/v1/gallery/{bundle_id}")
    assert got.status_code == 200 and got.json()["label"] == "airplane"
    assert len(got.json()["embedding"]) == 512
    page1 = client.get("/v1/gallery", params={"limit": 7}).json()
    page2 = client.get("/v1/gallery", params={"limit": 7, "after": page1["next"]}).json()
    ids = [i["id"] for i in page1["items"] + page2["items"]]
    assert len(ids) == 14 and ids == sorted(ids) and len(set(ids)) == 14
    assert client.get("/v1/gallery", params={"limit": 5000}).status_code == 422
    v = unit(3, seed=8)
    items = [{"id": f"bulk/{n}", "label": "b", "embedding": v[n].tolist()} for n in range(3)]
    assert client.post("/v1/gallery", json={"items": items}, headers=KEY).status_code == 200
    r = client.post("/v1/gallery/delete", json={"ids": ["bulk/0", "bulk/2", "nope"]},
                    headers=KEY)
    assert r.json()["deleted"] == ["bulk/0", "bulk/2"] and r.json()["missing"] == ["nope"]
    assert client.get("/v1/gallery/bulk/1").status_code == 200
    assert client.get("/v1/gallery/bulk/0").status_code == 404
    encoded = client.delete("/v1/gallery/bulk%2F1", headers=KEY)  # %2F works like '/'
    assert encoded.status_code == 200 and encoded.json()["deleted"] == "bulk/1"
    long = [{"id": "l", "label": "x" * 300, "embedding": v[0].tolist()}]
    assert client.post("/v1/gallery", json={"items": long}, headers=KEY).status_code == 422
    assert client.post("/v1/search", json={"embeddings": [v[0].tolist()], "k": 101}
                       ).status_code == 422


def test_bundle_items_can_be_deleted_and_stay_deleted(bundle_dir, tmp_path) -> None:
    data = tmp_path / "data"
    srv = Server(bundle_dir, data).start()
    r = httpx.delete(srv.url + "/v1/gallery/cat/1010", headers=KEY)
    first = httpx.get(srv.url + "/v1/gallery", params={"limit": 1}).json()["items"][0]["id"]
    r2 = httpx.delete(f"{srv.url}/v1/gallery/{first}", headers=KEY)
    srv.stop(signal.SIGKILL)
    srv = Server(bundle_dir, data).start()
    try:
        assert r2.status_code == 200
        assert httpx.get(f"{srv.url}/v1/gallery/{first}").status_code == 404
        assert httpx.get(srv.url + "/v1/gallery").json()["size"] == 200 - 1 - (
            r.status_code == 200)
    finally:
        srv.stop()


def test_another_models_gallery_is_left_alone(bundle_dir, tmp_path) -> None:
    """A data directory whose gallery another model made: this model gets its own beside it
    (DATA_DIR/<model id>/), and the other one is neither read nor changed."""
    data = tmp_path / "data"
    SQLiteStore(data / "gallery-int8.sqlite3", Space("other-model", "int8", 512)).close()
    srv = Server(bundle_dir, data).start()
    try:
        model = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        item = {"id": "mine", "embedding": unit(1, seed=3)[0].tolist()}
        assert httpx.post(srv.url + "/v1/gallery", json={"items": [item]},
                          headers=KEY).status_code == 200
    finally:
        srv.stop()
    other = SQLiteStore(data / "gallery-int8.sqlite3", Space("other-model", "int8", 512))
    try:
        assert other.seq() == 0  # nothing written there
    finally:
        other.close()
    with pytest.raises(GalleryMismatch, match="belongs to model other-model"):
        SQLiteStore(data / "gallery-int8.sqlite3", Space(model, "int8", 512))
    mine = SQLiteStore(data / model / "gallery-int8.sqlite3", Space(model, "int8", 512))
    try:
        assert mine.seq() == 1
    finally:
        mine.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_index_kinds_find_exact_matches_and_honour_deletes(tmp_path: Path, kind: str) -> None:
    emb = unit(500, seed=2)
    g = Gallery(SPACE, tmp_path / "g.sqlite3", kind)
    g.load([f"id{i}" for i in range(500)], [None] * 500, emb)
    hits = g.search(emb[:20], 3)
    assert [h[0].id for h in hits] == [f"id{i}" for i in range(20)]
    assert g.delete(["id5"]) == ["id5"] and g.delete(["id5"]) == []
    assert all(h.id != "id5" for h in g.search(emb[5:6], 10)[0])
    fresh = unit(1, seed=99)
    g.add(["id7"], ["moved"], fresh)  # re-adding an id replaces its vector and label
    assert len(g) == 499
    hit = g.search(fresh, 1)[0][0]
    assert (hit.id, hit.label) == ("id7", "moved") and hit.score == pytest.approx(1, abs=1e-5)
    old = g.search(emb[7:8], 1)[0][0]  # the old vector is gone from the index
    assert old.id != "id7" and old.score < 0.5


def test_two_handles_on_one_database_catch_up(tmp_path: Path) -> None:
    """Two galleries on one file stand for two workers: each sees the other's commits."""
    emb = unit(50, seed=3)
    a, b = (Gallery(SPACE, tmp_path / "g.sqlite3") for _ in range(2))
    for g in (a, b):
        g.load([f"b{i}" for i in range(10)], [None] * 10, emb[:10])
    a.add(["x"], ["l"], emb[10:11])
    assert b.search(emb[10:11], 1)[0][0].id == "x"
    assert b.delete(["x", "b3"]) == ["x", "b3"]
    assert a.get("x") is None and a.get("b3") is None and a.size() == 9
    assert a.delete(["b3"]) == []  # already gone: not deleted twice


def test_listings_stay_in_id_order_as_items_come_and_go(tmp_path: Path) -> None:
    """The order is kept item by item after the first listing (no re-sort per change), and
    agrees with a sorted copy of the live ids whatever happened in between."""
    emb = unit(400, seed=14)
    g = Gallery(SPACE, tmp_path / "g.sqlite3")
    g.load([f"b{n:03d}" for n in range(200)], [None] * 200, emb[:200])

    def pages(limit: int) -> list[str]:
        out, after = [], None
        while page := g.listing(after, limit):
            out += [i for i, _ in page]
            after = page[-1][0]
        return out

    assert pages(64) == sorted(f"b{n:03d}" for n in range(200))
    g.add([f"a{n}" for n in range(100)], ["x"] * 100, emb[200:300])  # before the b's
    g.delete([f"b{n:03d}" for n in range(0, 200, 3)])
    g.add(["b005", "zz"], ["again", "y"], emb[300:302])  # a replaced id keeps one place
    live = sorted(g.mem.by_id)
    assert pages(7) == live and len(live) == 300 - 67 + 1
    assert g.listing("b005", 1) == [("b007", None)] and g.listing("zz", 5) == []
    assert dict(g.listing("b004", 1)) == {"b005": "again"}


def test_every_thread_that_searches_keeps_faiss_to_its_thread_count(tmp_path: Path) -> None:
    """libgomp keeps the OpenMP thread count per thread: set only where the gallery loaded, the
    threads that search would run FAISS on every core (and its spinning workers slowed numpy's
    exact filter path 8x)."""
    import threading

    from simclr_embed.service.index import faiss

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: OpenMP's default is already one thread")
    emb = unit(100, seed=15)
    g = Gallery(SPACE, tmp_path / "g.sqlite3", faiss_threads=1)
    loader = threading.Thread(target=g.load, args=([f"b{n}" for n in range(100)],
                                                   [None] * 100, emb))
    loader.start()
    loader.join()
    seen: list[int] = []

    def search() -> None:
        before = faiss.omp_get_max_threads()  # this thread's default: one per core
        g.search(emb[:2], 3)
        seen.extend([before, faiss.omp_get_max_threads()])

    searcher = threading.Thread(target=search)
    searcher.start()
    searcher.join()
    assert seen == [os.cpu_count(), 1]


def test_mismatched_space_is_refused(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "g.sqlite3", SPACE)
    with pytest.raises(GalleryMismatch, match="belongs to model model-a"):
        SQLiteStore(tmp_path / "g.sqlite3", Space("model-b", "int8", 512))


def test_auto_index_and_the_cached_graph(tmp_path: Path, monkeypatch) -> None:
    from simclr_embed.service import gallery as gallery_mod

    monkeypatch.setattr(gallery_mod, "AUTO_HNSW_FROM", 1000)
    emb = unit(1500, seed=11)
    ids = [f"i{n}" for n in range(1500)]
    small = Gallery(SPACE, tmp_path / "s.sqlite3")
    small.load(ids[:999], [None] * 999, emb[:999])
    assert small.kind == "flat"
    first = Gallery(SPACE, tmp_path / "g.sqlite3")
    first.load(ids, [None] * 1500, emb)
    assert first.kind == "hnsw"
    (cache,) = tmp_path.glob("hnsw-*.faiss")
    stamp = cache.stat().st_mtime_ns
    again = Gallery(SPACE, tmp_path / "g.sqlite3")  # a restart: the graph is read, not rebuilt
    again.load(ids, [None] * 1500, emb)
    assert cache.stat().st_mtime_ns == stamp
    queries = unit(20, seed=12)
    assert [[h.id for h in r] for r in again.search(queries, 5)] == \
        [[h.id for h in r] for r in first.search(queries, 5)]
    exact = np.argsort(-(queries @ emb.T), axis=1)[:, :5]
    got = again.search(queries, 5)
    assert np.mean([len({f"i{n}" for n in e} & {h.id for h in r}) / 5
                    for e, r in zip(exact, got, strict=True)]) >= 0.95


def test_searches_run_alongside_writes(tmp_path: Path) -> None:
    import threading

    emb = unit(300, seed=13)
    g = Gallery(SPACE, tmp_path / "g.sqlite3")
    g.load([f"b{n}" for n in range(200)], [None] * 200, emb[:200])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                assert len(g.search(emb[:8], 3)[0]) == 3
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(200, 300):
        g.add([f"a{n}"], [None], emb[n : n + 1])
        if n % 3 == 0:
            g.delete([f"a{n}"])
    stop.set()
    for t in threads:
        t.join()
    assert not errors and g.size() == 200 + 100 - len(range(201, 300, 3))
    assert g.search(emb[299:300], 1)[0][0].id == "a299"


def test_workers_creating_one_database_at_once_agree(tmp_path: Path) -> None:
    """The workers of a swap to new weights open the new model's database together: one opens
    it at a time (before, one of them failed on 'duplicate column name' while the schema was
    made, or on 'database is locked' before WAL was set, and refused the swap)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def open_one(path: Path, start) -> SQLiteStore | Exception:
        start.wait()
        try:
            return SQLiteStore(path, SPACE)
        except Exception as e:  # the failure is what the test looks for
            return e

    with ThreadPoolExecutor(3) as pool:
        for round_ in range(100):
            path, start = tmp_path / f"r{round_}" / "gallery-int8.sqlite3", threading.Barrier(3)
            got = list(pool.map(open_one, [path] * 3, [start] * 3))
            errors = [g for g in got if isinstance(g, Exception)]
            for store in got:
                if not isinstance(store, Exception):
                    store.close()
            assert not errors, errors
