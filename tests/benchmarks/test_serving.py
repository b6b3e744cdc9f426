"""The serving benchmark's quick mode runs end to end against real servers (ours and the naive
baseline, driven by wrk and hey) so it cannot rot, and writes complete evidence. Nothing about
speed is asserted: speed lives in the committed full run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_serving_benchmark(bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "simclr_embed.benchmarks.serving",
                    "--bundle", str(bundle_dir), "--data", str(cifar10_dir), "--quick",
                    "--out", str(tmp_path)], check=True, timeout=900)
    res = json.loads((tmp_path / "serving.json").read_text())
    assert {"ort_fp32", "ort_int8"} <= set(res["engines"])
    for variant in res["engines"].values():
        assert variant["b1"]["p50_ms"] <= variant["b1"]["p99_ms"]
        assert variant["b64"]["images_per_s"] > 0
    assert set(res["http"]) == {"service", "service_ort", "service_2_workers", "naive",
                                "naive_openvino"}
    for server, http in res["http"].items():
        assert http["engine"] in res["engines"], server
        for run in http["sequential"] + http["closed_32"]:
            assert run["requests"] > 0 and run["non2xx"] == 0 and run["socket_errors"] == 0
            assert 0 < run["p50_ms"] <= run["p99_ms"] and run["tool_cpu_s"] > 0
        for run in http["closed_32"]:
            assert run["server_loop_cpu_ms_per_request"] > 0
            assert run["server_other_cpu_ms_per_request"] >= 0
            assert run["vs_engine_b64"] == run["requests_per_s"] / run["engine_b64_images_per_s"]
        for runs in http["open"].values():
            assert all(r["requests"] > 0 and r["non2xx"] == 0 for r in runs)
        assert http["rss_mb"] > 0
    for run in res["http"]["service"]["batch_16"]:  # 16 PNGs per multipart request
        assert run["requests"] > 0 and run["non2xx"] == 0 and run["socket_errors"] == 0
        assert run["images_per_s"] == 16 * run["requests_per_s"]
    assert {"int8_vs_fp32_b1", "int8_vs_fp32_b64", "http_p50_vs_engine_b1",
            "throughput_32_vs_engine_b64", "throughput_32_vs_naive_same_engine",
            "batch16_images_vs_engine_b64", "auto_took_the_fastest_engine"} <= set(res["ratios"])
    assert res["hardware"]["versions"]["onnxruntime"]
    assert (tmp_path / "serving.png").stat().st_size > 10_000
    assert "| goal | value | target | met |" in (tmp_path / "serving.md").read_text()
