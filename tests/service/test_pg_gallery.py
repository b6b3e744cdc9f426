"""The gallery in a real PostgreSQL 16 with pgvector (the `pgserver` wheel, started here): two
service replicas on one database agree on every change, the bundle is loaded once however many
replicas start together, and ten rounds of kill -9 during concurrent writes lose nothing
acknowledged and bring back nothing deleted."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pgserver
import pytest

from simclr_embed.service.pg_gallery import PgGallery
from simclr_embed.service.store import Space
from tests.support.gallery_chaos import KEY, chaos_rounds, check_ledger, unit
from tests.support.servers import Server


def replicas(bundle_dir: Path, tmp_path: Path, url: str, n: int = 2) -> list:
    """n service processes on one database, started together (the load races on purpose)."""
    servers = [Server(bundle_dir, tmp_path / f"r{i}", SIMCLR_EMBED_GALLERY_URL=url)
               for i in range(n)]
    threads = [threading.Thread(target=s.start) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return servers


def test_two_replicas_share_one_gallery(bundle_dir, tmp_path, pg_url) -> None:
    a, b = replicas(bundle_dir, tmp_path, pg_url)
    v = unit(10, seed=4)
    try:
        assert httpx.get(a.url + "/v1/gallery").json()["size"] == 200  # loaded once, not twice
        assert httpx.get(b.url + "/v1/gallery").json()["index"] == "pgvector-hnsw"
        for n in range(10):
            item = {"items": [{"id": f"p/{n}", "label": "pg", "embedding": v[n].tolist()}]}
            writer, reader = (a, b) if n % 2 else (b, a)
            assert httpx.post(writer.url + "/v1/gallery", json=item, headers=KEY).status_code \
                == 200
            hit = httpx.post(reader.url + "/v1/search",
                             json={"embeddings": [v[n].tolist()], "k": 1}).json()
            assert hit["results"][0][0]["id"] == f"p/{n}"
            assert hit["results"][0][0]["score"] == pytest.approx(1, abs=1e-5)
        assert httpx.delete(b.url + "/v1/gallery/p/3", headers=KEY).status_code == 200
        assert httpx.delete(a.url + "/v1/gallery/p/3", headers=KEY).status_code == 404
        assert httpx.get(a.url + "/v1/gallery/p/3").status_code == 404
        got = httpx.get(a.url + "/v1/gallery/airplane/0")
        assert got.json()["label"] == "airplane", got.text
        page = httpx.get(b.url + "/v1/gallery", params={"limit": 5, "after": "p/"}).json()
        assert [i["id"] for i in page["items"]] == ["p/0", "p/1", "p/2", "p/4", "p/5"]
    finally:
        for s in (a, b):
            s.stop()


@pytest.mark.slow
def test_ten_rounds_of_kill_9_on_replicas_lose_nothing(bundle_dir, tmp_path, pg_url) -> None:
    ledger = chaos_rounds(lambda: replicas(bundle_dir, tmp_path, pg_url), rounds=10, seed=7)
    (fresh,) = replicas(bundle_dir, tmp_path / "fresh", pg_url, n=1)
    try:
        check_ledger(fresh.url, ledger)
    finally:
        fresh.stop()


def test_search_matches_exact_inner_product(pg_url) -> None:
    g = PgGallery(Space("m", "int8", 512), pg_url, ef_search=100)
    emb = unit(2000, seed=6)
    g.load([f"i{n}" for n in range(2000)], [None] * 2000, emb)
    queries = unit(20, seed=9)
    exact = np.argsort(-(queries @ emb.T), axis=1)[:, :10]
    got = g.search(queries, 10)
    recall = np.mean([len({f"i{n}" for n in e} & {h.id for h in row}) / 10
                      for e, row in zip(exact, got, strict=True)])
    assert recall >= 0.95
    assert got[0][0].score == pytest.approx(float(queries[0] @ emb[exact[0][0]]), abs=1e-5)


@pytest.mark.slow
def test_a_replica_reconnects_after_the_database_restarts(bundle_dir, tmp_path) -> None:
    """A PostgreSQL of its own, stopped under a running replica: /readyz and every gallery
    call say 503 (not 500, not a silent 200) while it is down, and once it is back the same
    replica serves again without a restart, with what was acknowledged before."""
    pgdata = tmp_path / "pg"
    pg = pgserver.get_server(pgdata, cleanup_mode="stop")
    (srv,) = replicas(bundle_dir, tmp_path, pg.get_uri(), n=1)
    v = unit(2, seed=11)
    item = {"items": [{"id": "before", "embedding": v[0].tolist()}]}
    query = {"embeddings": [v[0].tolist()], "k": 1}
    try:
        assert httpx.post(srv.url + "/v1/gallery", json=item, headers=KEY).status_code == 200
        pgserver.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=pg.system_user)
        ready = httpx.get(srv.url + "/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        r = httpx.post(srv.url + "/v1/search", json=query, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable"
        pg.ensure_postgres_running()
        for _ in range(150):  # poll: the pool reconnects on the next request
            if httpx.get(srv.url + "/readyz", timeout=30).status_code == 200:
                break
        r = httpx.post(srv.url + "/v1/search", json=query, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0][0]["id"] == "before"
        item["items"][0].update(id="after", embedding=v[1].tolist())
        assert httpx.post(srv.url + "/v1/gallery", json=item, headers=KEY).status_code == 200
        assert "Traceback" not in srv.log_path.read_text()
    finally:
        srv.stop()
        pg.cleanup()
