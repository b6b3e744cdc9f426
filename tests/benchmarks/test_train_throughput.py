"""The benchmark runs end to end (tiny, so it cannot rot) and writes its evidence; no speed is
asserted here: speed lives in the benchmark's own JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_run_writes_complete_json(tmp_path: Path, cifar10_dir: Path) -> None:
    out = tmp_path / "t.json"
    subprocess.run([sys.executable, "-m", "simclr_embed.benchmarks.train_throughput", "--data",
                    str(cifar10_dir), "--batch-size", "10", "--rounds", "2", "--steps", "1",
                    "--out", str(out)], check=True, timeout=600)
    result = json.loads(out.read_text())
    assert {v["variant"] for v in result["variants"]} == {
        "fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    for v in result["variants"]:
        assert v["n_steps"] == 2 and v["images_per_s"] > 0 and v["peak_memory_mb"] > 0
        assert v["step_s_p5"] <= v["step_s_median"] <= v["step_s_p95"]
    assert result["hardware"]["versions"]["torch"] and result["images"] == str(cifar10_dir)
