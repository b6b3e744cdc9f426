"""What every gallery store shares: the embedding space it belongs to, a search hit, a filter,
and the protocol the embedded store (service/gallery.py) and PostgreSQL (service/pg_gallery.py)
both implement, so the engine, the routes and the indexer depend on neither."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Space:
    model_id: str
    precision: str
    dim: int


@dataclass
class Neighbor:
    id: str
    label: str | None
    score: float
    metadata: dict | None = None


@dataclass(frozen=True)
class Filter:
    """Items whose label is one of `labels` and, for each key of `metadata`, whose value is
    one of the listed values (exact JSON equality)."""

    labels: tuple[str, ...] | None = None
    metadata: tuple[tuple[str, tuple], ...] | None = None

    @classmethod
    def of(cls, label: str | list[str] | None, metadata: dict | None) -> Filter | None:
        if label is None and not metadata:
            return None
        labels = None if label is None else tuple([label] if isinstance(label, str) else label)
        meta = None if not metadata else tuple(
            (k, tuple(v if isinstance(v, list) else [v])) for k, v in sorted(metadata.items()))
        return cls(labels, meta)


class GalleryWriter(Protocol):
    """What writes a gallery without serving it (`simclr-embed index`): durable before `add` or
    `delete` returns. `origin` and `fingerprints` record where an indexed item came from and
    what its file was, so that a rerun embeds only what changed."""

    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray,
            thumbs: list[bytes | None] | None = None,
            metas: list[dict | None] | None = None, origin: str | None = None,
            fingerprints: list[str] | None = None) -> None: ...

    def delete(self, ids: list[str]) -> list[str]: ...

    def fingerprints(self, origin: str) -> dict[str, str]: ...

    def close(self) -> None: ...


class GalleryStore(GalleryWriter, Protocol):
    """A gallery: the bundle's items plus the changes made through the API, durable before an
    add or delete returns, searched by inner product over unit vectors. Its implementations
    (service/gallery.py, service/pg_gallery.py) are checked against it where
    service/engine.py's `open_gallery` returns them; the indexer's writers where
    service/indexer.py's `open_writer` does."""

    kind: str  # the index that answers searches, for /v1/model
    in_memory: bool  # True: a search never waits on I/O (the engine may run it on the loop)

    def load(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None: ...

    def get(self, id_: str) -> tuple[str | None, np.ndarray, dict | None] | None: ...

    def listing(self, after: str | None, limit: int) -> list[tuple[str, str | None]]: ...

    def items(self) -> tuple[list[str], list[str | None], np.ndarray]:
        """Every item's id and label, and the vectors (n, D): for duplicates and the map."""
        ...

    def changes(self) -> int:
        """A count that moves with every add or delete: how far the gallery map is behind."""
        ...

    def search(self, queries: np.ndarray, k: int,
               f: Filter | None = None) -> list[list[Neighbor]]: ...

    def size(self) -> int: ...

    def __len__(self) -> int: ...

    def thumbnail(self, id_: str) -> bytes | None: ...

    def healthy(self) -> bool: ...

    def recall_info(self) -> dict: ...
