"""Duplicates in a collection of embeddings: exact ones (identical decoded pixels, told by a
content hash) and near ones (a cosine at or above the bundle's calibrated threshold,
export/near_duplicates.py), and the groups they join into.

Near pairs come from an exact range search (FAISS, a flat inner-product index): every pair
above the threshold, none missed, as fastdup's maintainers ended up recommending over
approximate clusters. Queries go in chunks, so memory is bounded by the pairs found; on 2 cores
a 50,000 x 512 collection takes ~17 s (benchmarks/results/duplicates.json).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

CHUNK = 2048  # queries per range search: the scores of one chunk are CHUNK x N floats

Kind = Literal["exact", "near"]


@dataclass(frozen=True)
class Pair:
    a: int  # row of the earlier item
    b: int
    kind: Kind
    score: float


def pixel_hash(pixels: np.ndarray) -> str:
    """A content hash of decoded pixels (H, W, 3) uint8: equal for identical images, whatever
    their files' encodings."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(pixels.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


# Where pixels are gone (the served gallery), the same pixels give the same vector, up to the
# rounding of a normalization (an item added by its embedding is normalized again).
EXACT_COSINE = 1 - 1e-6


def near_pairs(vectors: np.ndarray, threshold: float) -> Iterator[tuple[int, int, float]]:
    """(i, j, cosine) with i < j for every pair at or above the threshold; unit vectors."""
    x = np.ascontiguousarray(vectors, np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)  # pyright: ignore[reportCallIssue]  (FAISS's SWIG signature)
    # FAISS keeps scores strictly above the radius; a hair below keeps those equal to it.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-1)))
    for start in range(0, len(x), CHUNK):
        lims, scores, ids = index.range_search(x[start : start + CHUNK], radius)  # pyright: ignore
        for q in range(len(lims) - 1):
            i = start + q
            for j, s in zip(ids[lims[q] : lims[q + 1]], scores[lims[q] : lims[q + 1]],
                            strict=True):
                if j > i:
                    yield i, int(j), float(s)


def find_pairs(vectors: np.ndarray, hashes: Sequence[str] | None,
               threshold: float) -> list[Pair]:
    """Exact pairs and near pairs (the rest at or above the threshold), by a, then b. With
    pixel hashes, exact is each item with the first of its hash, and pairs inside one exact
    group are not listed again as near; without them, a cosine of EXACT_COSINE or more."""
    if hashes is None:
        return [Pair(i, j, "exact" if s >= EXACT_COSINE else "near", s)
                for i, j, s in near_pairs(vectors, min(threshold, EXACT_COSINE))]
    first: dict[str, int] = {}
    exact_of = np.arange(len(hashes))  # each row's exact group: the row of its first copy
    pairs = []
    for i, h in enumerate(hashes):
        if h in first:
            exact_of[i] = first[h]
            score = float(np.dot(vectors[first[h]], vectors[i]))
            pairs.append(Pair(first[h], i, "exact", score))
        else:
            first[h] = i
    pairs += [Pair(i, j, "near", s) for i, j, s in near_pairs(vectors, threshold)
              if exact_of[i] != exact_of[j]]
    return sorted(pairs, key=lambda p: (p.a, p.b))


def groups(pairs: Sequence[Pair], n: int) -> list[list[int]]:
    """The connected components of the pairs with two or more members, largest first."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:
        parent[root(p.b)] = root(p.a)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


def report(names: Sequence[str], pairs: Sequence[Pair], threshold: float,
           limit: int | None = None) -> dict[str, Any]:
    """The answer of the route and the command: pairs and groups by name, the threshold."""
    shown = pairs if limit is None else pairs[:limit]
    return {"threshold": threshold, "items": len(names), "total_pairs": len(pairs),
            "exact_pairs": sum(p.kind == "exact" for p in pairs),
            "pairs": [{"a": names[p.a], "b": names[p.b], "kind": p.kind,
                       "score": round(p.score, 6)} for p in shown],
            "groups": [[names[i] for i in g] for g in groups(pairs, len(names))]}


def calibrated_threshold(manifest: dict[str, Any], precision: str) -> float | None:
    """The bundle's near-duplicate threshold at a precision (export/near_duplicates.py), or
    None for a bundle exported before there was one."""
    found = manifest.get("duplicates", {}).get(precision)
    return None if found is None else float(found["threshold"])
