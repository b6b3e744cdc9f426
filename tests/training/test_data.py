import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclr_embed.training import data
from simclr_embed.training.data import DataError, channel_stats, load_dataset, stratified_subset


def test_real_cifar10_splits(cifar10) -> None:
    train, test = cifar10
    assert train.images.shape == (50000, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 32, 32, 3)
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                             "horse", "ship", "truck"]
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_channel_stats_match_the_data_readme(cifar10) -> None:
    mean, std = channel_stats(cifar10[0].images)
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-4)
    np.testing.assert_allclose(std, [0.2452, 0.2428, 0.2606], atol=2e-4)


def test_stratified_subset(cifar10) -> None:
    sub = stratified_subset(cifar10[1], 7, seed=1)
    assert np.bincount(sub.labels).tolist() == [7] * 10
    again = stratified_subset(cifar10[1], 7, seed=1)
    np.testing.assert_array_equal(sub.images, again.images)
    with pytest.raises(DataError, match=r"fewer"):
        stratified_subset(cifar10[1], 1001)


def _write_folder(root: Path, cifar10, sizes=((32, 32), (64, 48))) -> None:
    """A small image folder from real CIFAR-10 images, in two formats and two sizes."""
    train = cifar10[0]
    for cls in (0, 3):
        d = root / train.classes[cls]
        d.mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(train.labels == cls)[:6]):
            img = Image.fromarray(train.images[i]).resize(sizes[j % 2])
            img.save(d / f"{j}.{'png' if j % 2 else 'jpg'}")


def test_image_folder_dir_and_tarball_decode_alike(tmp_path: Path, cifar10) -> None:
    root = tmp_path / "imgs"
    _write_folder(root, cifar10)
    with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="imgs")
    cache = tmp_path / "cache"
    d = data.decode_folder(root, 32)
    t = data.decode_folder(tmp_path / "imgs.tar.gz", 32)
    assert d.classes == t.classes == ["airplane", "cat"]
    assert d.images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(d.images, t.images)
    train, test = load_dataset(str(root), cache_dir=cache)  # no split: 10 % held out per class
    assert len(train) == 10 and len(test) == 2 and sorted(test.labels.tolist()) == [0, 1]


def test_split_layout_and_cache_reuse(tmp_path: Path, cifar10, monkeypatch) -> None:
    for split in ("train", "test"):
        _write_folder(tmp_path / "ds" / split, cifar10)
    cache = tmp_path / "cache"
    train, test = load_dataset(str(tmp_path / "ds"), cache_dir=cache)
    assert len(train) == len(test) == 12 and len(list(cache.glob("*.npz"))) == 2

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "decode_folder", no_decode)
    train2, _ = load_dataset(str(tmp_path / "ds"), cache_dir=cache)
    np.testing.assert_array_equal(train.images, train2.images)


def test_bad_sources_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*cifar10"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images"):
        load_dataset(str(tmp_path / "empty"), cache_dir=tmp_path / "c")
    bad = tmp_path / "bad" / "cls"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode cls/x.jpg"):
        load_dataset(str(tmp_path / "bad"), cache_dir=tmp_path / "c")


def test_offline_cifar10_download_says_how_to_use_a_local_copy(tmp_path: Path, monkeypatch) -> None:
    def refuse(*a, **k):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)  # offline, whatever this machine has
    with pytest.raises(DataError, match=r"could not download CIFAR-10.*--data"):
        load_dataset("cifar10", cache_dir=tmp_path)
