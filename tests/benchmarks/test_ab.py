"""The A/B benchmark runs two real servers that differ in one setting or special case and
reports both; its variant syntax reads names, environment assignments and server arguments."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simclr_embed.benchmarks.ab import parse_variant

pytestmark = pytest.mark.slow


def test_variant_syntax() -> None:
    assert parse_variant("base") == ("base", ({}, []))
    assert parse_variant("x:--no-settle,SIMCLR_EMBED_THREADS=1,--spinning=off") == (
        "x", ({"SIMCLR_EMBED_THREADS": "1"}, ["--no-settle", "--spinning=off"]))


def test_quick_ab_run(bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    subprocess.run([sys.executable, "-m", "simclr_embed.benchmarks.ab", "--bundle",
                    str(bundle_dir), "--quick", "--out", str(out),
                    "a", "b:--no-settle"], check=True, timeout=300)
    res = json.loads(out.read_text())["variants"]
    assert res["b"]["args"] == ["--no-settle"]
    for name in ("a", "b"):
        closed = res[name]["closed_32"]
        assert closed["requests_per_s"] > 0 and closed["server_loop_cpu_ms_per_request"] > 0
        assert 0 < res[name]["sequential"]["p50_ms"] <= res[name]["sequential"]["p99_ms"]
