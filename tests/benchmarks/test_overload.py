"""`benchmarks.overload` in its quick mode: 20 clients of 1 MB PNGs against a real server, with
hey's CSV half and its counting half, and /healthz probed throughout."""

import json
from pathlib import Path

import pytest

from tests.support.bench import quick

pytestmark = pytest.mark.slow


def test_quick_overload(bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    quick("overload", "--bundle", bundle_dir, "--data", cifar10_dir, out=tmp_path)
    (run,) = json.loads((tmp_path / "overload.json").read_text())["runs"]
    assert run["requests"] == sum(run["status_counts"].values()) > 0
    assert set(run["status_counts"]) <= {"200", "503"}  # answered or refused, nothing else
    assert run["answered"]["n"] == run["status_counts"].get("200", 0)
    assert run["failed"] == 0 and run["server_tracebacks"] == 0
    assert run["healthz"]["n"] > 0 and run["body_bytes"] >= 2**20
    assert "| load |" in (tmp_path / "overload.md").read_text()
