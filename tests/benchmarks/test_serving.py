"""The serving benchmark's quick mode runs end to end against real servers (so it cannot rot)
and writes complete evidence. Nothing about speed is asserted."""

import json
import subprocess
import sys
from pathlib import Path


def test_quick_serving_benchmark(bundle_dir: Path, short_checkpoint: Path, cifar10_dir: Path,
                                 tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "simclr_embed.benchmarks.serving",
                    "--bundle", str(bundle_dir),
                    "--checkpoint", str(short_checkpoint), "--data", str(cifar10_dir),
                    "--quick", "--out", str(tmp_path)],
                   check=True, timeout=900)
    res = json.loads((tmp_path / "serving.json").read_text())
    assert set(res["in_process"]) == {"torch_fp32", "ort_fp32", "ort_int8"}
    for variant in res["in_process"].values():
        assert {"b1", "b8", "b32", "b64"} <= set(variant)
        assert variant["b1"]["p50_ms"] <= variant["b1"]["p99_ms"]
    for precision in ("int8", "fp32"):
        http = res["http"][precision]
        assert set(http["sequential"]) == {"embed", "search", "classify"}
        assert [s["concurrency"] for s in http["load"]] == [1, 8]
        assert all(s["requests"] > 0 and s["errors"] == 0 for s in http["load"])
        assert http["rss_mb_end"] > 0
    assert {"int8_speedup_in_process_b1", "int8_http_overhead_p50",
            "int8_service_vs_engine_throughput"} <= set(res["ratios"])
    assert res["overload"]["max_queue_images"] == 16 and res["overload"]["requests"] > 0
    assert res["hardware"]["versions"]["onnxruntime"]
    assert (tmp_path / "serving.png").stat().st_size > 10_000
    assert "| load (embed, 1 image) |" in (tmp_path / "serving.md").read_text()
