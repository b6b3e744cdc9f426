"""Shared fixtures: the real CIFAR-10 copy in ../shared (read-only; decoded arrays are cached
under a per-session temp dir or $SIMCLR_EMBED_CACHE)."""

from __future__ import annotations

import faulthandler
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

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


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], Path]) -> Path:
    """`build(directory)` once per run. Under pytest-xdist the first worker to ask builds it in
    the directory the workers share, under a lock; the others wait for it and reuse it (each
    short run and its bundle is half a minute of CPU per worker otherwise)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{root}.lock"):
        done = root / ".built"
        if done.exists():
            return Path(done.read_text())
        shutil.rmtree(root, ignore_errors=True)  # a worker that died while building
        root.mkdir()
        out = build(root)
        done.write_text(str(out))
        return out


def _short_run(data: Path, out: Path, seed: int = 0) -> Path:
    """A finished (probe included) one-epoch run on 80 real CIFAR-10 images."""
    from simclr_embed.training.train import TrainConfig, train

    return train(TrainConfig(data=str(data), out_dir=str(out), train_per_class=8,
                             test_per_class=4, epochs=1, batch_size=32, warmup_epochs=1,
                             knn_every=0, probe_epochs=5, seed=seed))


def _small_bundle(checkpoint: Path, out: Path) -> Path:
    """A real bundle of a short run, on small gallery/test subsets, at both precisions."""
    from simclr_embed.export.build import ExportConfig, build_bundle

    return build_bundle(ExportConfig(str(checkpoint), out=str(out), calibration_per_class=5,
                                     gallery_per_class=20, test_per_class=10, latency_rounds=1,
                                     tolerance=5.0, gallery_precisions="int8,fp32"))


@pytest.fixture(scope="session")
def short_checkpoint(cifar10_dir: Path, tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "short_run", lambda d: _short_run(cifar10_dir, d))


@pytest.fixture(scope="session")
def bundle_dir(short_checkpoint: Path, tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "bundle",
                      lambda d: _small_bundle(short_checkpoint, d / "b"))


@pytest.fixture(scope="session")
def second_bundle_dir(cifar10_dir: Path, tmp_path_factory) -> Path:
    """Another model (other weights: another seed and other images), for servers of several
    models and for swaps."""
    return built_once(tmp_path_factory, "bundle2", lambda d: _small_bundle(
        _short_run(cifar10_dir, d / "run", seed=1), d / "b2"))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A non-daemon thread a test left running keeps this process alive after its summary (a
    failed test once left three search loops, and CI waited out its whole time): if the
    process has not exited two minutes from now, every thread's stack is printed and it exits
    with status 1."""
    faulthandler.dump_traceback_later(120, exit=True)
