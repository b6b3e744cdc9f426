"""The embedded gallery as it grows and shrinks, in process on a real SQLite file: the index
kind follows the whole gallery's size (switched by a background rebuild while searches and
writes go on), HNSW tombstones are compacted by one, and a restart reads the snapshot of the
whole index instead of re-inserting every vector; a damaged snapshot is rebuilt, not trusted.
The thresholds are lowered for the test (module constants)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from simclr_embed.service import gallery
from simclr_embed.service.gallery import Gallery
from simclr_embed.service.index import Space
from tests.service.gallery_chaos import unit

SPACE = Space("model-g", "int8", 512)


@pytest.fixture
def small_thresholds(monkeypatch):
    monkeypatch.setattr(gallery, "AUTO_HNSW_FROM", 600)
    monkeypatch.setattr(gallery, "AUTO_FLAT_BELOW", 300)
    monkeypatch.setattr(gallery, "SNAPSHOT_EVERY", 10**9)


def wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def bundle(g: Gallery, emb: np.ndarray) -> None:
    g.load([f"b{n}" for n in range(len(emb))], ["bundle"] * len(emb), emb)


def test_growth_switches_to_hnsw_under_searches_and_writes(small_thresholds, tmp_path: Path):
    emb = unit(1200, seed=31)
    g = Gallery(SPACE, tmp_path / "g.sqlite3")
    bundle(g, emb[:100])
    assert g.kind == "flat"
    errors, stop, acked = [], threading.Event(), []

    def searcher() -> None:
        try:
            while not stop.is_set():
                hits = g.search(emb[:4], 3)
                assert all(len(row) == 3 for row in hits)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(100, 1200, 50):  # across the threshold, a rebuild on the way
        ids = [f"a{n}" for n in range(start, start + 50)]
        g.add(ids, [None] * 50, emb[start:start + 50])
        acked += ids
    wait_for(lambda: g.kind == "hnsw" and g.rebuilding is None)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert g.size() == 1200 and g.mem.kind == "hnsw"
    for n in (150, 700, 1199):  # writes made during the rebuild are in the new index
        assert g.search(emb[n : n + 1], 1)[0][0].id == f"a{n}"
    g.delete([f"a{n}" for n in range(100, 1100)])  # and back below the lower threshold
    wait_for(lambda: g.kind == "flat" and g.rebuilding is None)
    assert g.size() == 200 and not g.mem.dead


def test_hnsw_tombstones_are_compacted(tmp_path: Path):
    emb = unit(800, seed=32)
    g = Gallery(SPACE, tmp_path / "g.sqlite3", "hnsw")
    bundle(g, emb)
    g.delete([f"b{n}" for n in range(300)])
    wait_for(lambda: g.rebuilding is None and not g.mem.dead)
    assert g.mem.index.ntotal == 500
    hits = g.search(emb[:300], 10)
    assert not {h.id for row in hits for h in row} & {f"b{n}" for n in range(300)}


def test_a_restart_reads_the_snapshot_and_a_damaged_one_is_rebuilt(tmp_path: Path, caplog):
    emb = unit(3000, seed=33)
    g = Gallery(SPACE, tmp_path / "g.sqlite3", "hnsw")
    bundle(g, emb[:500])
    g.add([f"a{n}" for n in range(500, 3000)], [None] * 2500, emb[500:])
    g.delete(["a600"])
    g.close()  # SIGTERM: the snapshot is written
    again = Gallery(SPACE, tmp_path / "g.sqlite3", "hnsw")
    with caplog.at_level("INFO"):
        bundle(again, emb[:500])
    assert "index snapshot read" in caplog.text
    assert again.size() == 2999 and again.get("a600") is None
    assert again.search(emb[2500:2501], 1)[0][0].id == "a2500"
    again.add(["late"], [None], emb[600:601])  # changes after the snapshot apply on top
    again.store.close()  # a kill: no new snapshot
    raw = bytearray(g.snapshot.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the index
    g.snapshot.write_bytes(bytes(raw))
    caplog.clear()
    third = Gallery(SPACE, tmp_path / "g.sqlite3", "hnsw")
    with caplog.at_level("INFO"):
        bundle(third, emb[:500])
    assert "unusable" in caplog.text and "snapshot read" not in caplog.text
    assert third.size() == 3000 and third.search(emb[600:601], 1)[0][0].id in ("late",)
