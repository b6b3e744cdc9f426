"""`benchmarks.index` in its quick mode: `simclr-embed index` over real CIFAR-10 JPEGs, small
and enlarged, against the raw engine."""

from pathlib import Path

import pytest

from tests.support.bench import quick

pytestmark = pytest.mark.slow


def test_quick_index(bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    res = quick("index", "--bundle", bundle_dir, "--data", cifar10_dir,
                out=tmp_path / "i.json")
    (row,) = res["rounds"]
    assert row["jpeg_32"]["indexed"] == res["n_images"]["jpeg_32"] == 300
    assert row["jpeg_640x480"]["indexed"] == res["n_images"]["jpeg_640x480"] == 20
    for name, m in res["median"].items():
        assert m["images_per_s"] > 0 and m["fraction_of_engine"] > 0, name
