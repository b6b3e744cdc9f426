"""The step profile runs the real training loop of a recipe under torch.profiler on real
CIFAR-10 images and accounts for each stage and the step's FLOPs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_profile(tmp_path: Path, cifar10_dir: Path) -> None:
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, "-m", "simclr_embed.benchmarks.step_profile", "--data",
                    str(cifar10_dir), "--train-per-class", "4", "--batch-size", "16",
                    "--out", str(out)], check=True, timeout=300)
    res = json.loads(out.read_text())
    assert res["steps"] == 40 // 16 and res["recipe"] == "cifar"
    assert set(res["stages"]) == {"data", "augment", "forward_loss", "backward_step"}
    stage_ms = sum(s["cpu_ms_per_step"] for s in res["stages"].values())
    assert 0.5 * res["step_ms"] < stage_ms <= 1.05 * res["step_ms"]  # the stages are the step
    # ResNet-18 with the CIFAR stem: ~1.1 GFLOPs forward per 32 px view; two views, and the
    # backward pass costs about twice the forward.
    assert 5e9 < res["flops_per_image"] < 8e9
    assert res["top_ops"] and res["share_of_peak"] is None
