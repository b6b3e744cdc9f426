import json
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
    d = data._cached_folder(root, 32, cache)
    t = data._cached_folder(tmp_path / "imgs.tar.gz", 32, cache)
    assert d.classes == t.classes == ["airplane", "cat"]
    assert d.images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(d.images, t.images)
    np.testing.assert_array_equal(d.labels, [0] * 6 + [1] * 6)
    train, test = load_dataset(str(root), cache_dir=cache)  # no split: 10 % held out per class
    assert len(train) == 10 and len(test) == 2 and sorted(test.labels.tolist()) == [0, 1]
    assert isinstance(train.images, np.memmap) and isinstance(test.images, np.memmap)
    for split in (train, test):  # the held-out split holds the very rows it names
        rows = [np.flatnonzero((d.images == img).all(axis=(1, 2, 3)))[0] for img in split.images]
        np.testing.assert_array_equal(d.labels[rows], split.labels)
    assert set(rows).isdisjoint(  # the test rows are not among the train rows
        np.flatnonzero((d.images[:, None] == train.images[None]).all(axis=(2, 3, 4)).any(1)))


def test_split_layout_and_cache_reuse(tmp_path: Path, cifar10, monkeypatch) -> None:
    for split in ("train", "test"):
        _write_folder(tmp_path / "ds" / split, cifar10)
    cache = tmp_path / "cache"
    train, test = load_dataset(str(tmp_path / "ds"), cache_dir=cache)
    assert len(train) == len(test) == 12 and len(list(cache.glob("*/images.npy"))) == 2
    assert not list(cache.glob(".*"))  # no temporary directory left behind

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


MMAP_CHECK = """
import json, sys
from pathlib import Path
import numpy as np
from simclr_embed.training.data import channel_stats, load_dataset

def anon_kb():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith("RssAnon"))
    return int(line.split()[1])

before = anon_kb()
train, test = load_dataset(sys.argv[1], image_size=224, cache_dir=Path(sys.argv[2]))
channel_stats(train.images)
print(json.dumps({"grew_kb": anon_kb() - before, "decoded_kb": (train.images.nbytes +
                  test.images.nbytes) // 1024, "mapped": isinstance(train.images, np.memmap)}))
"""


@pytest.mark.slow
def test_decoding_and_reading_a_folder_stays_off_the_heap(tmp_path: Path) -> None:
    """A folder is decoded window by window into a memory-mapped cache, and read from it: the
    process's anonymous memory grows by a fraction of the decoded set (here 226 MB of 224 px
    images), which is what lets a folder larger than RAM train."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 224, dtype=np.uint8)
    for i in range(1500):
        img = np.stack([np.add.outer(ramp, ramp * (i % 7)).astype(np.uint8)] * 3, -1)
        d = tmp_path / "big" / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img ^ rng.integers(0, 8, img.shape, np.uint8)).save(d / f"{i}.jpg")
    out = subprocess.run([sys.executable, "-c", MMAP_CHECK, str(tmp_path / "big"),
                          str(tmp_path / "cache")], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["mapped"] and report["decoded_kb"] > 200_000
    assert report["grew_kb"] < report["decoded_kb"] / 10, report
