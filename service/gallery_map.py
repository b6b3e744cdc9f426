"""A 2-D map of the gallery for the retrieval page (#36): UMAP of the embeddings where umap-learn
is installed (the `map` extra), else their first two principal components.

Computed off the request path, in a thread: at start when no saved map fits the gallery, and
again once the gallery has changed by more than REFRESH_FRACTION of its size; meanwhile the
route answers with the map it has. At most MAX_POINTS points, always the same ones for the same
ids (the lowest hashes of the ids), so that a refresh moves few of them in or out. Kept beside
the index snapshot (DATA_DIR/<gallery>.map.npz), so a restart need not compute it again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simclr_embed.service.store import GalleryStore

log = logging.getLogger(__name__)

MAX_POINTS = 20_000  # a canvas draws that many at once; a browser parses them in ~50 ms
REFRESH_FRACTION = 0.1
UMAP_FROM = 50  # fewer points have no neighbourhoods for UMAP to keep: PCA draws them


@dataclass
class Projection:
    ids: list[str]
    labels: list[str | None]
    xy: np.ndarray  # (n, 2) float32 in [0, 1]
    method: str  # "umap" or "pca"
    changes: int  # the gallery's change count when it was made
    size: int  # the gallery's size then (before thinning)
    seconds: float


def thin(ids: list[str], limit: int) -> np.ndarray:
    """Rows of at most `limit` ids, chosen by the hash of the id: stable across refreshes."""
    if len(ids) <= limit:
        return np.arange(len(ids))
    keys = np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big")
                     for i in ids], dtype=np.uint64)
    return np.sort(np.argsort(keys, kind="stable")[:limit])


def project(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, D) -> (n, 2) in [0, 1] and the method that made it."""
    if len(vectors) < 3:
        return np.full((len(vectors), 2), 0.5, np.float32), "pca"
    try:
        if len(vectors) < UMAP_FROM:
            raise ImportError
        import umap  # pyright: ignore[reportMissingImports]

        xy = umap.UMAP(n_components=2, metric="cosine", random_state=seed,
                       n_jobs=1).fit_transform(vectors)  # n_jobs=1: random_state holds
        method = "umap"
    except ImportError:
        centered = vectors - vectors.mean(0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        xy, method = centered @ vt[:2].T, "pca"
    # Scaled by the 0.5th to 99.5th percentiles, the rest clipped to the edge: one far island
    # (UMAP makes some) would otherwise squeeze the whole map into a corner.
    xy = np.asarray(xy, np.float64)
    lo, hi = np.percentile(xy, [0.5, 99.5], axis=0)
    span = np.where(hi > lo, hi - lo, 1)
    return np.clip((xy - lo) / span, 0, 1).astype(np.float32), method


class GalleryMap:
    def __init__(self, gallery: GalleryStore, path: Path,
                 refresh_fraction: float = REFRESH_FRACTION, max_points: int = MAX_POINTS
                 ) -> None:
        self.gallery, self.path = gallery, path
        self.refresh_fraction, self.max_points = refresh_fraction, max_points
        self.current: Projection | None = self._read()
        self.computing: threading.Thread | None = None
        self.lock = threading.Lock()

    def _read(self) -> Projection | None:
        try:
            with np.load(self.path, allow_pickle=False) as f:
                return Projection(f["ids"].tolist(), [None if lab == "\0" else str(lab) for lab
                                  in f["labels"].tolist()], f["xy"], str(f["method"]),
                                  int(f["changes"]), int(f["size"]), float(f["seconds"]))
        except (OSError, KeyError, ValueError) as e:
            if self.path.exists():
                log.warning("gallery map %s unreadable (%s): it is made again", self.path, e)
            return None

    def _write(self, p: Projection) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, ids=np.array(p.ids), labels=np.array(["\0" if lab is None else lab
                                                            for lab in p.labels]),
                 xy=p.xy, method=p.method, changes=p.changes, size=p.size, seconds=p.seconds)
        tmp.replace(self.path)  # a reader sees the old map or the new, never half of one

    def stale(self) -> bool:
        p = self.current
        if p is None:
            return True
        return abs(self.gallery.changes() - p.changes) > self.refresh_fraction * max(1, p.size)

    def refresh(self) -> threading.Thread | None:
        """Start computing a new map in a thread if the one held is stale and none is being
        computed; returns the thread that computes (or None)."""
        with self.lock:
            if self.computing is not None or not self.stale():
                return self.computing
            self.computing = threading.Thread(target=self._compute, name="gallery-map",
                                              daemon=True)
            self.computing.start()
            return self.computing

    def _compute(self) -> None:
        try:
            start = time.perf_counter()
            changes = self.gallery.changes()
            ids, labels, vectors = self.gallery.items()
            rows = thin(ids, self.max_points)
            xy, method = project(vectors[rows])
            p = Projection([ids[r] for r in rows], [labels[r] for r in rows], xy, method,
                           changes, len(ids), time.perf_counter() - start)
            self._write(p)
            self.current = p
            log.info("gallery map: %d of %d items by %s in %.1f s", len(rows), len(ids),
                     method, p.seconds)
        except Exception:
            log.exception("gallery map: not made; the old one (if any) stays")
        finally:
            self.computing = None

    def answer(self) -> dict[str, Any]:
        """The route's answer: the map held (starting a refresh when it is stale)."""
        self.refresh()
        p = self.current
        if p is None:
            return {"ready": False, "points": [], "refreshing": True}
        return {"ready": True, "method": p.method, "size": p.size, "shown": len(p.ids),
                "refreshing": self.computing is not None, "seconds": round(p.seconds, 2),
                "points": [{"id": i, "x": round(float(x), 4), "y": round(float(y), 4),
                            "label": lab} for i, lab, (x, y) in zip(p.ids, p.labels, p.xy,
                                                                    strict=True)]}
