"""The model bundle: a directory the service loads as is, written by export/.

    manifest.json            format, versions, sha256 + size of every file, classes, metrics
    encoder_fp32.onnx        uint8 pixels -> (embedding, logits)
    encoder_int8.onnx        the same graph, statically quantized
    head.npz                 the linear head (weight, bias) that both graphs end in
    gallery/ids.npy, labels.npy, embeddings_{int8,fp32}.npy (those exported)
    report.json, report.md   FP32 vs INT8 on the test split

Loading verifies every file against the manifest, so a missing, truncated or tampered file is
named before the service ever reports ready. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simclr_embed.errors import UserError

FORMAT = "simclr-embed/bundle"
VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("int8", "fp32")
# Set by `simclr-embed serve` once it has verified the bundle, for its workers (service/startup.py).
VERIFIED_ENV = "SIMCLR_EMBED_BUNDLE_VERIFIED"


class BundleError(UserError, RuntimeError):
    """A bundle that cannot be used; the message names the file and what is wrong."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Hash every file under root (except the manifest) into manifest['files'] and write it."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **manifest,
        "files": {
            str(p.relative_to(root)): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in files
        },
    }
    path = root / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    def encoder_path(self, precision: str) -> Path:
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        return self.root / self.manifest["encoders"][precision]

    def gallery_ids(self) -> np.ndarray:
        """(N,) str: the gallery's ids, without reading its vectors."""
        return np.load(self.root / self.manifest["gallery"]["ids"], allow_pickle=False)

    def gallery(self, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (N,) str, labels (N,) int64, embeddings (N, D) float32) for one precision."""
        g = self.manifest["gallery"]
        ids = self.gallery_ids()
        labels = np.load(self.root / g["labels"], allow_pickle=False)
        if precision not in g["embeddings"]:
            raise BundleError(
                f"{self.root} holds its gallery at {', '.join(g['embeddings'])} only; to serve "
                f"{precision}, export it again with --gallery-precisions "
                f"{','.join(sorted({*g['embeddings'], precision}))}")
        emb = np.load(self.root / g["embeddings"][precision], allow_pickle=False)
        return ids, labels, emb.astype(np.float32, copy=False)

    def thumbnails(self) -> np.ndarray | None:
        """(N, s, s, 3) uint8 gallery thumbnails, memory-mapped; None in older bundles."""
        rel = self.manifest["gallery"].get("thumbnails")
        return None if rel is None else np.load(self.root / rel, mmap_mode="r")

    def pca(self) -> np.ndarray | None:
        """(D, D) float32: principal axes of the gallery's embeddings, largest first (for
        `dimensions`); None in bundles exported before it."""
        rel = self.manifest.get("pca")
        return None if rel is None else np.load(self.root / rel, allow_pickle=False)

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.root / self.manifest["head"], allow_pickle=False) as f:
            return f["weight"], f["bias"]


def load_bundle(root: Path | str, verify: bool = True) -> Bundle:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing (build one with "
                          "`simclr-embed export <checkpoint> --out <dir>`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BundleError(f"{path}: expected format {FORMAT} version {VERSION}, got "
                          f"{manifest.get('format')} version {manifest.get('version')}")
    if verify and not verified(root, manifest["files"]):
        verify_files(root, manifest["files"])
    return Bundle(root, manifest)


def verified(root: Path, files: dict[str, dict[str, Any]]) -> bool:
    """Whether `simclr-embed serve` verified this very bundle before its workers (one stamp a
    line in VERIFIED_ENV, one per served bundle); a bundle with a file missing never was."""
    mark = stamp(root, files)
    return bool(mark) and mark in os.environ.get(VERIFIED_ENV, "").split("\n")


def stamp(root: Path, files: dict[str, dict[str, Any]]) -> str:
    """Where, how large and how new every file is: a bundle verified with this stamp has not
    been touched since (any write changes a size or an mtime), so a worker need not hash its
    400 MB again (0.3 s of every start)."""
    parts = [str(root.resolve())]
    for rel in files:
        try:
            st = (root / rel).stat()
        except OSError:
            return ""  # missing: let the verification name it
        parts.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def verify_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            raise BundleError(f"bundle file {rel} is missing from {root}")
        if p.stat().st_size != meta["bytes"]:
            raise BundleError(f"bundle file {rel} has {p.stat().st_size} bytes, the manifest "
                              f"says {meta['bytes']} (truncated or replaced)")
        if sha256(p) != meta["sha256"]:
            raise BundleError(f"bundle file {rel} does not match its sha256 in the manifest "
                              "(modified after export)")


def model_id(manifest: dict[str, Any]) -> str:
    """The served model's name: a hash of its weights (of its config in older bundles)."""
    ckpt = manifest["checkpoint"]
    digest = ckpt.get("weights_digest") or ckpt["config_digest"]
    return f"simclr-resnet18-{digest[:12]}"
