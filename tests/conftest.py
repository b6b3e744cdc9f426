"""Shared fixtures: the real CIFAR-10 copy in ../shared (read-only; decoded arrays are cached
under a per-session temp dir or $SIMCLR_EMBED_CACHE)."""

from __future__ import annotations

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
    from training.data import load_dataset

    return load_dataset(str(cifar10_dir))
