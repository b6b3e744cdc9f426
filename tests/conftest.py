"""Shared fixtures: the real CIFAR-10 copy in ../shared (read-only; decoded arrays are cached
under a per-session temp dir or $SIMCLR_EMBED_CACHE)."""

from __future__ import annotations

import faulthandler
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = Path(os.environ.get("SIMCLR_EMBED_TEST_DATA", REPO.parent / "shared/data/cifar10"))


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    if not (CIFAR10 / "train.tar.gz").exists():
        pytest.fail(f"CIFAR-10 copy not found at {CIFAR10}; set SIMCLR_EMBED_TEST_DATA")
    return CIFAR10


@pytest.fixture(scope="session")
def cifar10(cifar10_dir: Path):
    """(train, test) ImageArrays of the full real data set, decoded once per machine."""
    from simclr_embed.training.data import load_dataset

    return load_dataset(str(cifar10_dir))


@pytest.fixture(scope="session")
def short_checkpoint(cifar10_dir: Path, tmp_path_factory) -> Path:
    """A finished (probe included) one-epoch run on 80 real CIFAR-10 images."""
    from simclr_embed.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("short_run")
    cfg = TrainConfig(data=str(cifar10_dir), out_dir=str(out), train_per_class=8,
                      test_per_class=4, epochs=1, batch_size=32, warmup_epochs=1, knn_every=0,
                      probe_epochs=5)
    return train(cfg)


@pytest.fixture(scope="session")
def bundle_dir(short_checkpoint: Path, tmp_path_factory) -> Path:
    """A real bundle exported from the short run, on small gallery/test subsets."""
    from simclr_embed.export.build import ExportConfig, build_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    return build_bundle(ExportConfig(str(short_checkpoint), out=str(out), calibration_per_class=5,
                                     gallery_per_class=20, test_per_class=10, latency_rounds=1,
                                     tolerance=5.0, gallery_precisions="int8,fp32"))


@pytest.fixture(scope="session")
def second_bundle_dir(cifar10_dir: Path, tmp_path_factory) -> Path:
    """Another model (other weights: another seed and other images), for servers of several
    models and for swaps."""
    from simclr_embed.export.build import ExportConfig, build_bundle
    from simclr_embed.training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("second_run")
    ckpt = train(TrainConfig(data=str(cifar10_dir), out_dir=str(run), train_per_class=8,
                             test_per_class=4, epochs=1, batch_size=32, warmup_epochs=1,
                             knn_every=0, probe_epochs=5, seed=1))
    out = tmp_path_factory.mktemp("bundle2") / "b2"
    return build_bundle(ExportConfig(str(ckpt), out=str(out), calibration_per_class=5,
                                     gallery_per_class=20, test_per_class=10, latency_rounds=1,
                                     tolerance=5.0, gallery_precisions="int8,fp32"))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A non-daemon thread a test left running keeps this process alive after its summary (a
    failed test once left three search loops, and CI waited out its whole time): if the
    process has not exited two minutes from now, every thread's stack is printed and it exits
    with status 1."""
    faulthandler.dump_traceback_later(120, exit=True)
