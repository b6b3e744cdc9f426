"""`benchmarks.serving`: its four measurements run end to end in their quick modes against real
servers (ours and the naive baseline, driven by wrk and hey), so that none can rot, and write
evidence whose invariants hold. Nothing about speed is asserted: speed lives in the committed
full runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench import quick

pytestmark = pytest.mark.slow


def test_quick_serving_benchmark(bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "simclr_embed.benchmarks.serving", "http",
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
            assert run["requests"] > 0 and run["non2xx"] == 0 and run["failed"] == 0
            assert 0 < run["p50_ms"] <= run["p99_ms"] and run["tool_cpu_s"] > 0
        for run in http["closed_32"]:
            assert run["server_loop_cpu_ms_per_request"] > 0
            assert run["server_other_cpu_ms_per_request"] >= 0
        for runs in http["open"].values():
            assert all(r["requests"] > 0 and r["non2xx"] == 0 for r in runs)
        assert http["rss_mb"] > 0
    for run in res["http"]["service"]["batch_16"]:  # 16 PNGs per multipart request
        assert run["requests"] > 0 and run["non2xx"] == 0 and run["failed"] == 0
    assert {"int8_vs_fp32_b1", "int8_vs_fp32_b64", "http_p50_vs_engine_b1",
            "throughput_32_vs_engine_b64", "throughput_32_vs_naive_same_engine",
            "batch16_images_vs_engine_b64", "auto_took_the_fastest_engine"} <= set(res["ratios"])
    assert res["hardware"]["versions"]["onnxruntime"]
    assert (tmp_path / "serving.png").stat().st_size > 10_000
    assert "| goal | value | target | met |" in (tmp_path / "serving.md").read_text()


def test_compact_vectors(bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    res = quick("serving", "compact", "--bundle", bundle_dir, "--data", cifar10_dir,
                out=tmp_path / "c.json")
    f = {name: row["recall_at_10"] for name, row in res["formats"].items()}
    assert f["float"] == f["base64"] == 1.0  # the same float32 vectors, however sent
    assert 1.0 >= f["float16"] >= f["int8"] >= f["binary"] == f["ubinary"]
    assert f["binary_rerank_100"] > f["binary"]  # the shortlist re-ranked by float vectors
    sizes = {name: row["json_bytes_per_vector"] for name, row in res["formats"].items()
             if "json_bytes_per_vector" in row}
    assert sizes["base64"] < sizes["float"] and sizes["binary"] < sizes["int8"]
    full = res["dimensions"][str(max(map(int, res["dimensions"])))]
    assert full["recall_at_10"] > 0.99  # every dimension kept: the same neighbours
    for fmt, http in res["http_embed_16_images"].items():
        assert http["n"] == 2 and http["response_bytes_16_images"] > 0, fmt


def test_model_swap(bundle_dir: Path, second_bundle_dir: Path, tmp_path: Path) -> None:
    res = quick("serving", "swap", "--bundles", bundle_dir, second_bundle_dir,
                out=tmp_path / "s.json")
    assert res["non2xx_during_swaps"] == 0
    (memory,) = res["memory_mb"]
    assert memory["two_models"] > memory["one_model"] > 0
    for run in res["wrk_baseline"] + res["wrk_swap"]:
        assert run["requests"] == run["ok"] > 0 and run["failed"] == 0
    (swap,) = res["hey_swap"]
    assert swap["swap_s"] > 0 and swap["drained_s"] >= swap["swap_s"]
    assert swap["during_swap"]["n"] + swap["outside_swap"]["n"] == swap["requests"]
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_trace_picture(bundle_dir: Path, tmp_path: Path) -> None:
    quick("serving", "trace", "--bundle", bundle_dir, out=tmp_path)
    spans = json.loads((tmp_path / "batched_trace.json").read_text())
    requests = [s for s in spans if s["name"] == "POST /v1/classify"]
    (batch,) = [s for s in spans if s["name"] == "model batch"]
    assert len({s["trace_id"] for s in requests}) == 2
    # the one batch links to a span of each request's trace: they shared it
    trace_of = {s["span_id"]: s["trace_id"] for s in spans}
    assert {trace_of[link] for link in batch["links"]} == {s["trace_id"] for s in requests}
    assert (tmp_path / "batched_trace.png").stat().st_size > 10_000
