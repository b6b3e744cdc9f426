"""`benchmarks.gallery`: its three measurements run end to end in their quick modes (real
galleries, real servers) and write evidence whose invariants hold; speed is not asserted."""

from pathlib import Path

import pytest

from tests.support.bench import quick

pytestmark = pytest.mark.slow


def test_search(bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    res = quick("gallery", "search", "--bundle", bundle_dir, "--data", cifar10_dir,
                out=tmp_path / "g.json")
    rows = {r["backend"]: r for r in res["rows"]}
    assert set(rows) == {"embedded flat", "embedded hnsw"}
    assert rows["embedded flat"]["recall_at_10"] == 1.0  # exact search is exact
    assert rows["embedded hnsw"]["recall_at_10"] >= 0.9
    for r in rows.values():
        assert r["n"] > 0 and r["adds_per_s"] > 0
        assert r["p50_ms"] <= r["p99_ms"]


def test_growth(bundle_dir: Path, tmp_path: Path) -> None:
    res = quick("gallery", "growth", "--bundle", bundle_dir, out=tmp_path / "g.json")
    sizes = {s["step"]: s["size"] for s in res["steps"]}
    base = sizes["bundle"]
    assert sizes == {"bundle": base, "+1000 added": base + 1000,
                     "-100 deleted": base + 900, "after restart": base + 900}
    assert res["events"]["deleted_ids_returned"] == 0
    assert all(s["recall_at_10"] >= 0.9 for s in res["steps"])
    assert len(res["events"]["restart_to_readyz_s"]["runs"]) == 3


def test_million(bundle_dir: Path, tmp_path: Path) -> None:
    res = quick("gallery", "million", "--bundle", bundle_dir, out=tmp_path / "m.json")
    assert res["serve"]["size"] == res["vectors"] == 5000
    assert res["serve"]["recall_at_10"] >= 0.9 and res["serve"]["search"]["n"] == 300


def test_duplicates(bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    res = quick("gallery", "duplicates", "--bundle", bundle_dir, "--data", cifar10_dir,
                out=tmp_path / "d.json")
    held = res["calibration"]["held_out"]
    assert held["images"] == 50 and 0 <= held["precision"] <= 1
    pairs = res["gallery_pairs"]
    assert pairs["vectors"] == 200 and pairs["threshold"] == res["calibration"]["threshold"]
    assert len(pairs["seconds"]) == 1 and res["map"]["points"] == 200
