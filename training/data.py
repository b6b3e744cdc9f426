"""Image data as uint8 arrays: CIFAR-10 from torchvision, or any image folder (a directory or a
.tar.gz of `<class>/<image>` files), decoded once and cached as .npz.

A data source is one of:
  * `cifar10`: torchvision's copy, downloaded into `download_root` when missing;
  * a directory holding `train` and `test` splits, each an image folder or `<split>.tar.gz`
    (this is the layout of the offline copy in ../shared/data/cifar10);
  * a single image folder or .tar.gz, from which a stratified 10 % is held out as the test split.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from simclr_embed.service.preprocess import to_square_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test")
HOLDOUT_FRACTION = 0.1
# Bump when decoding changes (orientation, bit depth, resizing) so old caches are not reused.
DECODE_VERSION = 2


class DataError(RuntimeError):
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
    test_idx = stratified_indices(full.labels, fraction=HOLDOUT_FRACTION, seed=0)
    train_mask = np.ones(len(full), bool)
    train_mask[test_idx] = False
    log.info("no train/test split under %s: holding out %d images as test", root, len(test_idx))
    return full.subset(np.flatnonzero(train_mask)), full.subset(test_idx)


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
    cache = cache_dir / f"{path.name}-{cache_key(path, image_size)}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return ImageArray(f["images"], f["labels"], [str(c) for c in f["classes"]])
    data = decode_folder(path, image_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # A temp name of this process's own: torchrun ranks decode side by side.
    fd, tmp = tempfile.mkstemp(prefix=f".{cache.stem}.", suffix=".npz", dir=cache.parent)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, images=data.images, labels=data.labels, classes=np.array(data.classes))
    os.replace(tmp, cache)  # a reader never sees a half-written cache
    log.info("cached %d decoded images from %s in %s", len(data), path, cache)
    return data


def decode_folder(path: Path, image_size: int) -> ImageArray:
    """Decode every image of `<class>/<image>` (a directory or .tar.gz) to (N, S, S, 3) uint8."""
    items = sorted(_iter_files(path))  # (class, name, bytes), sorted for a stable order
    if not items:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    classes = sorted({c for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c, _, _ in items], np.int64)

    def decode(item: tuple[str, str, bytes]) -> np.ndarray:
        cls, name, raw = item
        try:
            return to_square_rgb(Image.open(io.BytesIO(raw)), image_size)
        except OSError as e:
            raise DataError(f"cannot decode {cls}/{name} in {path}: {e}") from e

    # Pillow releases the GIL while it decodes and resizes: threads use every core.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        decoded = pool.map(decode, items, chunksize=256)
        images = np.stack(list(tqdm(decoded, total=len(items), desc=f"decode {path.name}",
                                    unit="img")))
    return ImageArray(images, labels, classes)


def _iter_files(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(class folder name, file name, bytes) for each image directly inside a class folder."""
    if path.is_dir():
        for f in path.glob("*/*"):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                yield f.parent.name, f.name, f.read_bytes()
        return
    if not tarfile.is_tarfile(path):
        raise DataError(f"{path} is neither a directory nor a tar archive")
    with tarfile.open(path) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 2 and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
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
