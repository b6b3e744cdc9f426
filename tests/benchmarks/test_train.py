"""`benchmarks.train`: both measurements run end to end on real CIFAR-10 images (tiny, so that
they cannot rot) and write their evidence; speed is not asserted (it lives in the JSON)."""

from pathlib import Path

import pytest

from tests.support.bench import quick

pytestmark = pytest.mark.slow


def test_throughput(tmp_path: Path, cifar10_dir: Path) -> None:
    result = quick("train", "throughput", "--data", cifar10_dir, "--precisions", "fp32,bf16",
                   out=tmp_path / "t.json")
    assert {v["variant"] for v in result["variants"]} == {
        "fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    for v in result["variants"]:
        assert v["n_steps"] == 2 and v["images_per_s"] > 0 and v["peak_memory_mb"] > 0
        assert v["step_s_p5"] <= v["step_s_median"] <= v["step_s_p95"]
    assert result["hardware"]["versions"]["torch"] and result["images"] == str(cifar10_dir)


def test_profile(tmp_path: Path, cifar10_dir: Path) -> None:
    res = quick("train", "profile", "--data", cifar10_dir, out=tmp_path / "profile.json")
    assert res["steps"] == 40 // 16 and res["recipe"] == "cifar"
    assert set(res["stages"]) == {"data", "augment", "forward_loss", "backward_step"}
    assert all(s["cpu_ms_per_step"] > 0 for s in res["stages"].values())  # each one timed
    # ResNet-18 with the CIFAR stem: ~1.1 GFLOPs forward per 32 px view; two views, and the
    # backward pass costs about twice the forward.
    assert 5e9 < res["flops_per_image"] < 8e9
    assert res["top_ops"] and res["share_of_peak"] is None


def test_tricks(tmp_path: Path, cifar10_dir: Path) -> None:
    res = quick("train", "tricks", "--data", cifar10_dir, out=tmp_path / "tricks.json")
    assert {r["variant"] for r in res["runs"]} == {"simclr", "momentum+queue", "multi-crop 2x4"}
    for r in res["runs"]:
        assert r["epochs"] >= 2 and r["steps"] > 0 and 0 <= r["knn_top1"] <= 100
    plain = next(r for r in res["runs"] if r["variant"] == "simclr")
    assert 0 <= plain["linear_mixup_top1"] <= 100
    assert (tmp_path / "tricks.png").stat().st_size > 0
