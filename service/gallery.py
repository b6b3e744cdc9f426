"""The searchable gallery: the bundle's embeddings plus durable additions and deletions.

FAISS inner product over unit vectors (cosine): exact (IndexFlatIP) by default, HNSW for large
galleries. Changes go to an append-only journal that is fsync'ed before the caller is answered,
so an acknowledged add or delete survives a restart or a kill -9; on start the journal is
replayed over the bundle's gallery, and a torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Neighbor:
    id: str
    label: str | None
    score: float


class Gallery:
    def __init__(self, dim: int, journal: Path, index: str = "flat", hnsw_m: int = 32,
                 ef_search: int = 64) -> None:
        base = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT) if index == "hnsw" \
            else faiss.IndexFlatIP(dim)
        if index == "hnsw":
            base.hnsw.efSearch = ef_search
        self.index = faiss.IndexIDMap2(base)
        self.removable = index == "flat"  # HNSW cannot remove: deleted rows become tombstones
        self.dim, self.journal = dim, journal
        self.ids: dict[int, tuple[str, str | None]] = {}  # internal -> (id, label)
        self.by_id: dict[str, int] = {}
        self.next = 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.by_id)

    def _insert(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        for i in ids:
            if i in self.by_id:
                self._remove(i)
        internal = np.arange(self.next, self.next + len(ids), dtype=np.int64)
        self.next += len(ids)
        self.index.add_with_ids(np.ascontiguousarray(emb, np.float32), internal)
        for n, i, lab in zip(internal.tolist(), ids, labels, strict=True):
            self.ids[n] = (i, lab)
            self.by_id[i] = n

    def _remove(self, id_: str) -> None:
        n = self.by_id.pop(id_)
        if self.removable:
            self.index.remove_ids(np.array([n], dtype=np.int64))
        self.ids.pop(n)  # a tombstone in HNSW: search skips internal ids it no longer knows

    def load(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        """The bundle's gallery, then the journal replayed over it."""
        self._insert(ids, labels, emb)
        replayed = 0
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("ignoring a torn journal line in %s", self.journal)
                    continue
                self._apply(rec)
                replayed += 1
        log.info("gallery: %d vectors (%d journal records replayed)", len(self), replayed)

    def _apply(self, rec: dict) -> None:
        if rec["op"] == "add":
            emb = np.frombuffer(base64.b64decode(rec["embedding"]), np.float32)[None]
            self._insert([rec["id"]], [rec.get("label")], emb)
        elif rec["op"] == "delete" and rec["id"] in self.by_id:
            self._remove(rec["id"])

    def _journal(self, records: list[dict]) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        records = [{"op": "add", "id": i, "label": lab,
                    "embedding": base64.b64encode(e.astype(np.float32).tobytes()).decode()}
                   for i, lab, e in zip(ids, labels, emb, strict=True)]
        with self.lock:
            self._journal(records)
            self._insert(ids, labels, emb)

    def delete(self, id_: str) -> bool:
        with self.lock:
            if id_ not in self.by_id:
                return False
            self._journal([{"op": "delete", "id": id_}])
            self._remove(id_)
            return True

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbor]]:
        """queries (Q, D) unit-norm -> k best neighbours each, best first."""
        with self.lock:
            extra = 0 if self.removable else self.index.ntotal - len(self.ids)
            scores, internal = self.index.search(np.ascontiguousarray(queries, np.float32),
                                                 min(k + extra, max(1, self.index.ntotal)))
            out = []
            for row_s, row_i in zip(scores, internal, strict=True):
                hits = [Neighbor(*self.ids[n], float(s))
                        for s, n in zip(row_s, row_i, strict=True) if n in self.ids]
                out.append(hits[:k])
            return out
