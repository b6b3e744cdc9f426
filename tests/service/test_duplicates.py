"""Duplicates (service/duplicates.py, export/near_duplicates.py) and the gallery map
(service/gallery_map.py) on real embeddings: the range search against a brute-force scan,
exact pairs told from near ones, the threshold calibrated on real CIFAR-10 images with a real
ONNX Runtime session, `simclr-embed duplicates` on a folder with planted copies, and the two
routes on a real server."""

import io
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from simclr_embed.cli import main
from simclr_embed.export.near_duplicates import TRANSFORMS, calibrate, choose_threshold, copies
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.duplicates import find_pairs, groups, near_pairs, pixel_hash
from simclr_embed.service.gallery_map import GalleryMap, project, thin
from simclr_embed.service.runtime import make_session, run_batches
from tests.support.servers import API_KEY, Server


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors(bundle_dir: Path) -> np.ndarray:
    """The bundle's real gallery vectors, and a noisy near copy of every tenth."""
    emb = load_bundle(bundle_dir).gallery("int8")[2]
    rng = np.random.default_rng(0)
    near = unit(emb[::10] + 0.05 * rng.standard_normal(emb[::10].shape))
    return np.concatenate([emb, near]).astype(np.float32)


def test_range_search_finds_exactly_the_pairs_a_scan_finds(vectors: np.ndarray,
                                                           monkeypatch) -> None:
    monkeypatch.setattr("simclr_embed.service.duplicates.CHUNK", 37)  # several chunks
    sims = vectors @ vectors.T
    for t in (0.9, 0.97):
        rows, cols = np.nonzero(np.triu(sims >= t, k=1))
        scan = set(zip(rows.tolist(), cols.tolist(), strict=True))
        found = {(i, j) for i, j, _ in near_pairs(vectors, t)}
        assert found == scan and scan, t


def test_exact_pairs_are_told_apart_and_join_groups(vectors: np.ndarray) -> None:
    v = np.concatenate([vectors[:50], vectors[:1], vectors[3:4]])  # rows 50, 51: exact copies
    hashes = [str(i) for i in range(50)] + ["0", "3"]
    pairs = find_pairs(v, hashes, 0.999)
    exact = [(p.a, p.b) for p in pairs if p.kind == "exact"]
    assert exact == [(0, 50), (3, 51)]
    assert not [p for p in pairs if p.kind == "near" and {p.a, p.b} in ({0, 50}, {3, 51})]
    assert [0, 50] in groups(pairs, len(v)) and [3, 51] in groups(pairs, len(v))


def test_the_threshold_is_the_lowest_with_the_precision_asked() -> None:
    scores = np.array([0.99, 0.98, 0.97, 0.96, 0.95])
    is_true = np.array([True, True, False, True, False])
    assert choose_threshold(scores, is_true, 0.75) == 0.96  # 3 of 4 at 0.96
    assert choose_threshold(scores, is_true, 0.9) == 0.98


def test_copies_take_each_transformation_in_turn(cifar10) -> None:
    images = cifar10[1].images[:12]
    out, kinds = copies(images, seed=0)
    assert kinds == list(TRANSFORMS) * 2 and out.shape == images.shape
    flipped = out[kinds.index("flip")]
    assert np.array_equal(flipped, images[kinds.index("flip")][:, ::-1])
    assert all(not np.array_equal(a, b) for a, b in zip(out, images, strict=True))


@pytest.mark.slow
def test_calibration_on_real_images_holds_out_half(bundle_dir: Path, cifar10) -> None:
    test = cifar10[1]
    idx = np.concatenate([np.flatnonzero(test.labels == c)[:20] for c in range(10)])
    session = make_session(load_bundle(bundle_dir).encoder_path("int8"))
    found = calibrate(lambda x: run_batches(session, x)[0], test.images[idx], test.labels[idx])
    assert 0 < found["threshold"] <= 1
    assert found["calibration"]["precision"] >= found["target_precision"]
    held = found["held_out"]
    assert held["images"] == 100 and held["collection"] == 200
    assert 0 <= held["precision"] <= 1 and 0 <= held["recall"] <= 1
    assert set(held["per_transformation"]) == set(TRANSFORMS)


def test_the_exported_bundle_carries_its_threshold(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for precision in ("int8", "fp32"):
        found = manifest["duplicates"][precision]
        assert 0 < found["threshold"] <= 1 and found["held_out"]["images"] > 0


def test_duplicates_command_on_a_folder_with_planted_copies(bundle_dir: Path, cifar10,
                                                            tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "photos"
    (folder / "x").mkdir(parents=True)
    images = cifar10[1].images[:20]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / "x" / f"{i}.png")
    Image.fromarray(images[0]).save(folder / "x" / "copy-of-0.png")  # the same pixels
    Image.fromarray(images[1]).save(folder / "x" / "1-again.bmp")  # same pixels, other format
    Image.fromarray(images[2][:, ::-1]).save(folder / "x" / "2-flipped.png")
    report = tmp_path / "dups.json"
    monkeypatch.chdir(tmp_path)
    assert main(["duplicates", str(folder), "--bundle", str(bundle_dir), "--report",
                 str(report), "--data-dir", str(tmp_path / "data"), "--provider", "cpu",
                 "--threshold", "0.9999"]) == 0
    found = json.loads(report.read_text())
    exact = {frozenset((p["a"], p["b"])) for p in found["pairs"] if p["kind"] == "exact"}
    assert exact == {frozenset(("x/0.png", "x/copy-of-0.png")),
                     frozenset(("x/1.png", "x/1-again.bmp"))}
    assert found["threshold"] == 0.9999 and found["items"] == 23


def test_pixel_hash_sees_pixels_not_files(cifar10) -> None:
    image = cifar10[1].images[5]
    as_png, as_bmp = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(as_png, "PNG")
    Image.fromarray(image).save(as_bmp, "BMP")
    decoded = [np.asarray(Image.open(b).convert("RGB")) for b in (as_png, as_bmp)]
    assert pixel_hash(decoded[0]) == pixel_hash(decoded[1]) != pixel_hash(image[::-1])


class FakeGallery:
    """The two calls the map makes, over real vectors: named, for speed (a server test below
    covers the real store)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors, self.n = vectors, 0

    def changes(self) -> int:
        return self.n

    def items(self) -> tuple[list[str], list[str | None], np.ndarray]:
        return [f"i{k}" for k in range(len(self.vectors))], ["a"] * len(self.vectors), \
            self.vectors


def test_umap_keeps_neighbours_near(vectors: np.ndarray) -> None:
    """The map extra's path (umap-learn, in the dev extra): each point's nearest neighbour in
    the embedding space lies closer on the map than a random point does, mostly."""
    xy, method = project(vectors)
    assert method == "umap" and xy.min() >= 0 and xy.max() <= 1
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -2)
    nearest = sims.argmax(1)
    other = np.random.default_rng(0).permutation(len(vectors))
    near_d = np.linalg.norm(xy - xy[nearest], axis=1)
    far_d = np.linalg.norm(xy - xy[other], axis=1)
    assert (near_d < far_d).mean() > 0.8


def test_map_is_thinned_stably_persisted_and_refreshed_past_a_fraction(vectors, tmp_path,
                                                                       monkeypatch):
    ids = [f"i{k}" for k in range(1000)]
    assert np.array_equal(thin(ids, 100), thin(ids, 100)) and len(thin(ids, 100)) == 100
    assert set(thin(ids[:900], 100)) & set(thin(ids, 100))  # most stay in when a few come
    monkeypatch.setitem(sys.modules, "umap", None)  # as without the map extra: PCA
    xy, method = project(vectors)
    assert method == "pca" and xy.min() >= 0 and xy.max() <= 1 and xy.shape == (len(vectors), 2)
    g = FakeGallery(vectors)
    m = GalleryMap(g, tmp_path / "g.map.npz", max_points=100)  # type: ignore[arg-type]
    assert m.answer()["ready"] is False
    if m.computing is not None:
        m.computing.join()
    first = m.answer()
    assert first["ready"] and first["shown"] == 100 and first["size"] == len(vectors)
    again = GalleryMap(g, tmp_path / "g.map.npz", max_points=100)  # type: ignore[arg-type]
    assert not again.stale() and again.answer()["points"] == first["points"]  # from disk
    g.n = int(0.1 * len(vectors))  # changes up to the fraction: kept
    assert not again.stale()
    g.n += 1
    assert again.stale() and again.refresh() is not None


@pytest.fixture(scope="module")
def own_server(bundle_dir: Path, tmp_path_factory):
    srv = Server(bundle_dir, tmp_path_factory.mktemp("dups") / "data").start()
    yield srv
    srv.stop()


def ready_map(url: str) -> dict:
    """The map once made (a waited-on state: the route says when it is ready)."""
    deadline = time.monotonic() + 180  # UMAP's first call compiles (numba)
    while True:
        m = httpx.get(url + "/v1/gallery/map", timeout=30).json()
        if m["ready"] and not m["refreshing"]:
            return m
        assert time.monotonic() < deadline, m
        time.sleep(0.05)


def test_gallery_routes_find_the_added_copies_and_map_them(own_server, bundle_dir) -> None:
    url, key = own_server.url, {"authorization": f"Bearer {API_KEY}"}
    m = ready_map(url)
    ids, _, emb = load_bundle(bundle_dir).gallery("int8")
    assert m["method"] == "umap" and m["size"] == len(ids) == m["shown"]
    assert {p["id"] for p in m["points"]} == set(ids.tolist())
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in m["points"])
    rng = np.random.default_rng(1)
    # A barely trained model puts random items at a median cosine of 0.96: copies at 0.9997.
    near = unit(emb[:30] + 0.001 * rng.standard_normal(emb[:30].shape))
    items = ([{"id": "copy-0", "embedding": emb[0].tolist()}]
             + [{"id": f"near-{i}", "embedding": v.tolist()} for i, v in enumerate(near)])
    r = httpx.post(url + "/v1/gallery", json={"items": items}, headers=key, timeout=30)
    assert r.status_code == 200, r.text
    found = httpx.post(url + "/v1/gallery/duplicates", json={"threshold": 0.999}, timeout=60)
    assert found.status_code == 200, found.text
    body = found.json()
    kinds = {frozenset((p["a"], p["b"])): p["kind"] for p in body["pairs"]}
    assert kinds[frozenset((str(ids[0]), "copy-0"))] == "exact"
    assert all(kinds.get(frozenset((str(ids[i]), f"near-{i}"))) == "near" for i in range(30))
    assert body["items"] == len(ids) + 31
    calibrated = httpx.post(url + "/v1/gallery/duplicates", json={}, timeout=60).json()
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert calibrated["threshold"] == manifest["duplicates"]["int8"]["threshold"]
    assert httpx.post(url + "/v1/gallery/duplicates", json={"threshold": 2},
                      timeout=30).status_code == 422
    after = ready_map(url)  # 31 changes on 200 items: past the fraction, so made again
    assert after["size"] == len(ids) + 31 and "near-0" in {p["id"] for p in after["points"]}


def test_a_limit_past_the_list_size_lists_that_many(own_server) -> None:
    """Schemathesis's case: a valid limit above SIMCLR_EMBED_MAX_LIST_ITEMS is capped, not a
    422; every pair is still counted."""
    r = httpx.post(own_server.url + "/v1/gallery/duplicates",
                   json={"threshold": 0.5, "limit": 6932}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["pairs"]) == min(1000, body["total_pairs"]) and body["total_pairs"] > 1000
