"""Image data as uint8 arrays: CIFAR-10 from torchvision, or any image folder (a directory or a
.tar.gz of `<class>/<image>` files), decoded once into a cache directory and memory-mapped from
it, so a folder larger than memory still trains.

A data source is one of:
  * `cifar10`: torchvision's copy, downloaded into `download_root` when missing;
  * a directory holding `train` and `test` splits, each an image folder or `<split>.tar.gz`
    (this is the layout of the offline copy in ../shared/data/cifar10);
  * a single image folder or .tar.gz, from which a stratified 10 % is held out as the test split.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from simclr_embed.errors import UserError
from simclr_embed.service.preprocess import to_square_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test")
HOLDOUT_FRACTION = 0.1
# Bump when decoding changes (orientation, bit depth, resizing) so old caches are not reused.
DECODE_VERSION = 2


class DataError(UserError, RuntimeError):
    """A data source that cannot be read; the message says what to do."""


@dataclass
class ImageArray:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageArray:
        return ImageArray(self.images[idx], self.labels[idx], self.classes)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIMCLR_EMBED_CACHE", Path.home() / ".cache" / "simclr-embed"))


def load_dataset(
    source: str, image_size: int = 32, cache_dir: Path | None = None
) -> tuple[ImageArray, ImageArray]:
    """(train, test) for a data source (see the module docstring)."""
    cache_dir = cache_dir or default_cache_dir()
    if source == "cifar10":
        return tuple(_torchvision_cifar10(cache_dir / "torchvision", s) for s in SPLITS)  # type: ignore[return-value]
    root = Path(source).expanduser()
    if not root.exists():
        raise DataError(
            f"data source {source!r} does not exist; pass 'cifar10' (downloads) or a path to an "
            "image folder, a .tar.gz of one, or a directory with train/ and test/ splits"
        )
    splits = [_find_split(root, s) for s in SPLITS]
    if all(splits):
        train, test = (_cached_folder(p, image_size, cache_dir) for p in splits)  # type: ignore[arg-type]
        if train.classes != test.classes:
            raise DataError(f"train and test class folders differ under {root}")
        return train, test
    full = _cached_folder(root, image_size, cache_dir)
    train, test = holdout_split(full, cache_dir / f"{root.name}-{cache_key(root, image_size)}")
    log.info("no train/test split under %s: holding out %d images as test", root, len(test))
    return train, test


def stratified_indices(
    labels: np.ndarray, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted indices of a random subset with `per_class` (or `fraction` of each class) images."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = per_class if per_class is not None else max(1, round(len(idx) * (fraction or 0)))
        if k > len(idx):
            raise DataError(f"class index {c} has {len(idx)} images, fewer than the {k} "
                            "asked for")
        picked.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def stratified_subset(data: ImageArray, per_class: int | None, seed: int = 0,
                      flag: str | None = None) -> ImageArray:
    """k images per class (all images when per_class is None). Given the flag that set k, a
    class with fewer images lowers k to its size, with a warning that names them both."""
    if per_class is None:
        return data
    names, counts = np.unique(data.labels, return_counts=True)
    if flag is not None and per_class > counts.min():
        small = data.classes[int(names[counts.argmin()])]
        log.warning("class %r has %d images, fewer than %s %d: taking %d of each class",
                    small, counts.min(), flag, per_class, counts.min())
        per_class = int(counts.min())
    return data.subset(stratified_indices(data.labels, per_class=per_class, seed=seed))


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on a 0..1 scale, in chunks to bound memory."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(total_sq / count - mean * mean)
    return mean.tolist(), std.tolist()


def _find_split(root: Path, split: str) -> Path | None:
    for candidate in (root / split, root / f"{split}.tar.gz", root / f"{split}.tgz"):
        if candidate.exists():
            return candidate
    return None


def cache_key(path: Path, image_size: int) -> str:
    """What the decoded arrays depend on: the decoder's version, the image size and every source
    file's name, size and mtime (a directory's own mtime misses edits inside class folders)."""
    files = [path] if path.is_file() else sorted(f for f in path.glob("*/*") if f.is_file())
    h = hashlib.sha1(f"{DECODE_VERSION}|{path.resolve()}|{image_size}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.relative_to(path.parent)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cached_folder(path: Path, image_size: int, cache_dir: Path) -> ImageArray:
    """The decoded folder, memory-mapped from its cache directory (images.npy, labels.npy,
    classes.json): a set larger than RAM trains from the page cache."""
    cache = cache_dir / f"{path.name}-{cache_key(path, image_size)}"
    if not (cache / "images.npy").exists():
        _publish(cache, lambda tmp: decode_folder(path, image_size, tmp))
        log.info("cached the decoded images of %s in %s", path, cache)
    return open_cache(cache)


def open_cache(cache: Path) -> ImageArray:
    # Copy-on-write: torch wants writable arrays, and nothing may write back to the cache.
    return ImageArray(np.load(cache / "images.npy", mmap_mode="c"),
                      np.load(cache / "labels.npy"),
                      json.loads((cache / "classes.json").read_text()))


def _publish(cache: Path, write: Callable[[Path], object]) -> None:
    """Write a cache directory under a temporary name of this process's own (torchrun ranks
    decode side by side), then rename it: a reader never sees a half-written cache."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        write(tmp)
        os.rename(tmp, cache)
    except OSError:
        if not (cache / "images.npy").exists():  # not a rank that lost the race to rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def holdout_split(full: ImageArray, cache: Path) -> tuple[ImageArray, ImageArray]:
    """(train, test) with a stratified HOLDOUT_FRACTION as test; a memory-mapped set is split
    into two more cache directories, row chunk by row chunk, rather than copied into RAM."""
    test_idx = stratified_indices(full.labels, fraction=HOLDOUT_FRACTION, seed=0)
    train_mask = np.ones(len(full), bool)
    train_mask[test_idx] = False
    parts = {"train": np.flatnonzero(train_mask), "test": test_idx}
    for name, idx in parts.items():
        if not (cache / name / "images.npy").exists():
            _publish(cache / name, lambda tmp, idx=idx: write_rows(full, idx, tmp))
    return open_cache(cache / "train"), open_cache(cache / "test")


def write_rows(data: ImageArray, idx: np.ndarray, out: Path, chunk: int = 4096) -> None:
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8,
                                       (len(idx), *data.images.shape[1:]))
    for start in range(0, len(idx), chunk):
        images[start : start + chunk] = data.images[idx[start : start + chunk]]
    images.flush()
    np.save(out / "labels.npy", data.labels[idx])
    (out / "classes.json").write_text(json.dumps(data.classes))


def decode_folder(path: Path, image_size: int, out: Path, window: int = 256) -> None:
    """Decode every image of `<class>/<image>` (a directory or .tar.gz) into out/images.npy,
    (N, S, S, 3) uint8 in sorted (class, name) order, a window of files at a time, so neither
    the files nor the decoded set need to fit in memory."""
    names = sorted(_list_files(path))  # (class, name)
    if not names:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    classes = sorted({c for c, _ in names})
    index = {c: i for i, c in enumerate(classes)}
    row = {item: i for i, item in enumerate(names)}
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8,
                                       (len(names), image_size, image_size, 3))

    def decode(item: tuple[str, str, bytes]) -> tuple[int, np.ndarray]:
        cls, name, raw = item
        try:
            return row[cls, name], to_square_rgb(Image.open(io.BytesIO(raw)), image_size)
        except OSError as e:
            raise DataError(f"cannot decode {cls}/{name} in {path}: {e}") from e

    files = _iter_files(path)
    # Pillow releases the GIL while it decodes and resizes: threads use every core.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool, tqdm(
            total=len(names), desc=f"decode {path.name}", unit="img") as bar:
        while batch := list(itertools.islice(files, window)):
            for i, image in pool.map(decode, batch):
                images[i] = image
            bar.update(len(batch))
    images.flush()
    np.save(out / "labels.npy", np.array([index[c] for c, _ in names], np.int64))
    (out / "classes.json").write_text(json.dumps(classes))


def _list_files(path: Path) -> list[tuple[str, str]]:
    """(class folder name, file name) of each image, read without the images' bytes."""
    if path.is_dir():
        return [(f.parent.name, f.name) for f in path.glob("*/*")
                if f.suffix.lower() in IMAGE_SUFFIXES]
    if not tarfile.is_tarfile(path):
        raise DataError(f"{path} is neither a directory nor a tar archive")
    with tarfile.open(path) as tar:
        return [(Path(m.name).parts[-2], Path(m.name).parts[-1]) for m in tar if _is_image(m)]


def _is_image(m: tarfile.TarInfo) -> bool:
    return m.isfile() and len(Path(m.name).parts) >= 2 and (
        Path(m.name).suffix.lower() in IMAGE_SUFFIXES)


def _iter_files(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(class folder name, file name, bytes) for each image directly inside a class folder."""
    if path.is_dir():
        for cls, name in _list_files(path):
            yield cls, name, (path / cls / name).read_bytes()
        return
    with tarfile.open(path) as tar:
        for m in tar:
            if _is_image(m):
                parts = Path(m.name).parts
                yield parts[-2], parts[-1], tar.extractfile(m).read()  # type: ignore[union-attr]


def _torchvision_cifar10(root: Path, split: str) -> ImageArray:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=split == "train", download=True)
    except Exception as e:  # URLError, timeouts, checksum failures: all mean "no usable copy"
        raise DataError(
            f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}). Without "
            "internet, point --data at a local copy: a directory with train/ and test/ image "
            "folders or train.tar.gz/test.tar.gz (e.g. --data ../shared/data/cifar10)"
        ) from e
    return ImageArray(np.asarray(ds.data), np.asarray(ds.targets, np.int64), list(ds.classes))
