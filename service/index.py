"""The embedded gallery's in-memory side: a FAISS index over unit vectors (inner product =
cosine), the names of its rows, and what filters match. Not thread-safe: service/gallery.py
holds the locks.

Rows are internal ids (0..n-1 for the bundle, then one per stored change). A deleted row is a
tombstone, left out of every search by a FAISS id selector, so a delete costs a set insertion,
not a pass over the index; the tombstones of an exact index are compacted in one `remove_ids`
pass once they reach COMPACT_FRACTION of it (HNSW cannot remove: its tombstones stay excluded).

A filter (labels, metadata values; a list means any of) is answered exactly over the matching
rows when they are few (at most EXACT_FILTER_ROWS), else by the index restricted to them.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
from sortedcontainers import SortedList

from simclr_embed.service.store import Filter, Neighbor

# faiss's loader logs a harmless "ModuleNotFoundError" for each CPU flavour it tries first.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
# FAISS's type information is its SWIG layer's C++ signatures; faiss/class_wrappers.py replaces
# them at import with the numpy ones called here, so those lines carry pyright ignores.
import faiss  # noqa: E402

COMPACT_FRACTION = 0.125
EXACT_FILTER_ROWS = 20_000  # reconstructing them costs less than a restricted graph walk


def _key(name: str, value: object) -> tuple[str, str]:
    """A metadata value as PostgreSQL's jsonb compares it (`@>`, service/pg_gallery.py), so
    that one filter finds the same items in either store: numbers by their decimal value
    (1 = 1.0 = 1e0, as the JSON text a float is sent as), booleans only equal themselves
    (true != 1), strings exactly ("1" != 1), null equals null."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return name, "n:" + str(Decimal(repr(value)).normalize())
    return name, json.dumps(value, sort_keys=True)


class MemoryIndex:
    def __init__(self, index: faiss.Index, kind: str) -> None:
        self.index, self.kind = index, kind  # an IndexIDMap2 over flat or HNSW
        self.rows: dict[int, tuple[str, str | None]] = {}  # internal -> (id, label)
        self.meta: dict[int, dict] = {}
        self.by_id: dict[str, int] = {}
        self.by_label: dict[str | None, set[int]] = {}
        self.by_value: dict[tuple[str, str], set[int]] = {}
        self.dead: set[int] = set()
        self._selector: faiss.IDSelector | None = None
        self._sorted: SortedList | None = None  # ids in order, once a listing asked for them
        self._ids: np.ndarray | None = None  # the FAISS id of each stored position, ascending
        self.next = 0
        self.recall: dict | None = None  # an HNSW graph's measured recall (service/recall.py)

    def __len__(self) -> int:
        return len(self.by_id)

    # --- changes -----------------------------------------------------------------------------
    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray,
            metas: list[dict | None] | None = None, in_index: bool = False) -> None:
        """Rows for ids (replacing those that exist), in one FAISS call."""
        for i in ids:
            if i in self.by_id:
                self.remove(i)
        start = self.next
        if not in_index:
            internal = np.arange(start, start + len(ids), dtype=np.int64)
            self.index.add_with_ids(np.ascontiguousarray(emb, np.float32), internal)
        for n, (i, lab, meta) in enumerate(zip(ids, labels, metas or [None] * len(ids),
                                               strict=True), start):
            self.name(n, i, lab, meta)
        self.next += len(ids)
        self._selector = self._ids = None  # the bitmap of live rows ends before the new ones

    def name(self, n: int, id_: str, label: str | None, meta: dict | None) -> None:
        """Row n (in the FAISS index already) is item id_."""
        self.rows[n], self.by_id[id_] = (id_, label), n
        if self._sorted is not None:
            self._sorted.add(id_)
        self.by_label.setdefault(label, set()).add(n)
        if meta:
            self.meta[n] = meta
            for k, v in meta.items():
                self.by_value.setdefault(_key(k, v), set()).add(n)

    def remove(self, id_: str) -> None:
        n = self.by_id.pop(id_)
        _, label = self.rows.pop(n)
        if self._sorted is not None:
            self._sorted.remove(id_)
        self.by_label[label].discard(n)
        for k, v in (self.meta.pop(n, None) or {}).items():
            self.by_value[_key(k, v)].discard(n)
        self.dead.add(n)
        self._selector = None

    def compact(self) -> None:
        """One remove_ids pass for the tombstones of an exact index, once they are many."""
        if self.kind == "flat" and len(self.dead) > COMPACT_FRACTION * self.index.ntotal:
            self.index.remove_ids(np.fromiter(self.dead, np.int64, len(self.dead)))  # pyright: ignore[reportArgumentType]
            self.dead.clear()
            self._selector = self._ids = None

    # --- reads -------------------------------------------------------------------------------
    def frozen(self) -> MemoryIndex:
        """A copy to write a snapshot from with no lock held (a memory copy of the index)."""
        out = MemoryIndex(faiss.clone_index(self.index), self.kind)
        out.rows, out.meta, out.dead, out.next = dict(self.rows), dict(self.meta), \
            set(self.dead), self.next
        out.recall = self.recall
        return out

    def live(self) -> tuple[list[tuple[str, str | None, dict | None]], np.ndarray]:
        """(id, label, metadata) of every live row, and their vectors (n, D)."""
        rows = np.fromiter(self.rows, np.int64, len(self.rows))
        vecs = self._vectors(rows)
        return [(*self.rows[n], self.meta.get(n)) for n in rows.tolist()], vecs

    def page(self, after: str | None, limit: int) -> list[tuple[str, str | None]]:
        """(id, label) of up to `limit` items in id order after `after`. The order is sorted
        once, at the first listing (not at every start), then kept item by item."""
        if self._sorted is None:  # under a read lock: racing readers build the same list
            self._sorted = SortedList(self.by_id)
        start = 0 if after is None else self._sorted.bisect_right(after)
        return [(i, self.rows[self.by_id[i]][1]) for i in self._sorted.islice(start,
                                                                             start + limit)]

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D): the stored vectors of these rows, copied from the flat storage by
        position. IndexIDMap2's reconstruct_batch goes row by row through its hash map: 10 to 20x
        slower (3.7-7.3 ms against 0.3 for the 1,500 rows of a 1 % filter at 200k)."""
        if len(rows) == 0:
            return np.zeros((0, self.index.d), np.float32)
        if self._ids is None:  # ascending: rows are added in order, and remove_ids keeps it
            self._ids = faiss.vector_to_array(self.index.id_map)  # pyright: ignore[reportAttributeAccessIssue]
        pos = np.searchsorted(self._ids, rows)
        if pos.max() >= len(self._ids) or not np.array_equal(self._ids[pos], rows):
            raise RuntimeError("the index's ids are out of order")  # never: add() appends
        base = faiss.downcast_index(self.index.index)  # pyright: ignore[reportAttributeAccessIssue]
        flat = faiss.downcast_index(base.storage) if self.kind == "hnsw" else base  # pyright: ignore[reportAttributeAccessIssue]
        return flat.reconstruct_batch(pos)

    def vector(self, id_: str) -> tuple[str | None, np.ndarray, dict | None] | None:
        n = self.by_id.get(id_)
        if n is None:
            return None
        return self.rows[n][1], self.index.reconstruct(n), self.meta.get(n)  # pyright: ignore[reportReturnType]

    def matching(self, f: Filter) -> np.ndarray:
        """Internal ids of the live rows the filter lets through."""
        sets: list[set[int]] = []
        if f.labels is not None:
            sets.append(set().union(*(self.by_label.get(lab, ()) for lab in f.labels)))
        for name, values in f.metadata or ():
            sets.append(set().union(*(self.by_value.get(_key(name, v), ()) for v in values)))
        rows = set.intersection(*sets) if sets else set()
        return np.fromiter(rows, np.int64, len(rows))

    def search(self, queries: np.ndarray, k: int, f: Filter | None = None,
               ef_search: int = 64) -> list[list[Neighbor]]:
        """queries (Q, D) unit-norm -> k best neighbours each, best first."""
        queries = np.ascontiguousarray(queries, np.float32)
        if f is None:
            scores, internal = self._search(queries, k, self._live(), ef_search)
        else:
            allowed = self.matching(f)
            if len(allowed) == 0:
                return [[] for _ in queries]
            if len(allowed) <= EXACT_FILTER_ROWS:
                scores, internal = self._exact(queries, k, allowed)
            else:
                ef = int(min(1024, ef_search * self.index.ntotal / len(allowed)))
                scores, internal = self._search(queries, k, faiss.IDSelectorBatch(allowed), ef)
        return [[Neighbor(*self.rows[n], float(s), self.meta.get(n))
                 for s, n in zip(row_s, row_i, strict=True) if n in self.rows]
                for row_s, row_i in zip(scores, internal, strict=True)]

    def _live(self) -> faiss.IDSelector | None:
        """A bitmap of the live rows (one bit test per visited node: ~10 % faster at 200k rows
        and 20k tombstones than a hash set of the dead ones), rebuilt after changes."""
        if not self.dead:
            return None
        if self._selector is None:
            live = np.ones(self.next, bool)
            live[np.fromiter(self.dead, np.int64, len(self.dead))] = False
            bits = np.packbits(live, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(bits)  # pyright: ignore[reportCallIssue]
            self._selector.bits_ref = bits  # FAISS reads the array; it must outlive the search  # pyright: ignore[reportAttributeAccessIssue]
        return self._selector

    def _search(self, queries: np.ndarray, k: int, sel: faiss.IDSelector | None,
                ef: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, max(1, len(self)))
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef, k))  # pyright: ignore[reportAttributeAccessIssue]
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None  # pyright: ignore[reportCallIssue]
        return self.index.search(queries, k, params=params)

    def _exact(self, queries: np.ndarray, k: int,
               allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vecs = self._vectors(allowed)  # (A, D)
        sims = queries @ vecs.T  # (Q, A)
        k = min(k, len(allowed))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), 1), 1)
        return np.take_along_axis(sims, order, 1), allowed[order]


def changes_in_bulk(changes: Iterable[tuple], index: MemoryIndex) -> None:
    """Stored changes (id, label, vector bytes or None, seq, metadata JSON) applied to the
    index: deletions at once, the adds that follow them gathered into one FAISS call; only the
    last change of each id counts, as in the store."""
    pending: dict[str, tuple[str | None, bytes, str | None]] = {}
    for id_, label, blob, _, meta in changes:
        pending.pop(id_, None)
        if blob is None:
            if id_ in index.by_id:
                index.remove(id_)
        else:
            pending[id_] = (label, blob, meta)
    if pending:
        ids = list(pending)
        emb = np.frombuffer(b"".join(v[1] for v in pending.values()), np.float32)
        index.add(ids, [v[0] for v in pending.values()], emb.reshape(len(ids), -1),
                  [json.loads(v[2]) if v[2] else None for v in pending.values()])
    index.compact()


def save(mem: MemoryIndex, seq: int, bundle: str, path: Path) -> None:
    """The whole index and its rows, as of change `seq`, in one file written whole and renamed
    into place (workers may write it at once: their internal ids differ, so index and rows must
    never come from two of them): the FAISS index as FAISS writes it (so that FAISS reads it
    straight from the file), then the JSON (rows as columns, tombstones, CRC-32 of the index
    part), then the JSON's length in 8 bytes and its own CRC-32 in 4."""
    data = faiss.serialize_index(mem.index)
    info = {"seq": seq, "bundle": bundle, "kind": mem.kind, "next": mem.next,
            "recall": mem.recall,
            "dead": sorted(mem.dead), "crc32": zlib.crc32(data), "index_bytes": len(data),  # pyright: ignore[reportArgumentType]
            "rows": {"n": list(mem.rows), "id": [i for i, _ in mem.rows.values()],
                     "label": [lab for _, lab in mem.rows.values()],
                     "metadata": [mem.meta.get(n) for n in mem.rows]}}
    # Columns, not a list per row: orjson reads 200k rows of them in 25 ms instead of 150.
    tail = orjson.dumps(info)
    # Unique per writer (process, then a random part): workers, and a writer's threads, never
    # write into one temp file; remove_orphans() finds those of processes that died.
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp",
                                dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))  # pyright: ignore[reportArgumentType]
            f.write(tail + len(tail).to_bytes(8, "little")
                    + zlib.crc32(tail).to_bytes(4, "little"))
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def remove_orphans(path: Path) -> list[Path]:
    """Temp files of snapshots whose writer died mid-write (kill -9, power): a live worker's
    are left alone. Returns those removed."""
    gone = []
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 1:].split(".")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def _tail(path: Path) -> dict:
    with path.open("rb") as f:
        f.seek(-12, os.SEEK_END)
        end = f.read(12)
        size = int.from_bytes(end[:8], "little")
        f.seek(-12 - size, os.SEEK_END)
        raw = f.read(size)
    if zlib.crc32(raw) != int.from_bytes(end[8:], "little"):
        raise ValueError("the CRC-32 of its rows differs")
    return orjson.loads(raw)


def _crc32(path: Path, n: int, chunk: int = 1 << 24) -> int:
    """Of the first n bytes, read in chunks (not one 400 MB copy)."""
    crc, buf = 0, bytearray(chunk)
    with path.open("rb", buffering=0) as f:
        while n > 0:
            got = f.readinto(memoryview(buf)[: min(chunk, n)])
            if not got:
                raise ValueError("shorter than its index part")
            crc, n = zlib.crc32(memoryview(buf)[:got], crc), n - got
    return crc


def load(path: Path, dim: int, bundle: str) -> tuple[MemoryIndex, int] | None:
    """(index, the seq it holds) from a snapshot, or None when there is none, it belongs to
    another bundle, or it does not check out (CRC, dimension, rows): a damaged snapshot is
    rebuilt, never trusted."""
    try:
        info = _tail(path)
        if info["bundle"] != bundle:
            return None
        if _crc32(path, info["index_bytes"]) != info["crc32"]:
            raise ValueError("CRC-32 differs")
        index = faiss.read_index(str(path))  # from the page cache the CRC left it in
        if index.d != dim or index.ntotal != len(info["rows"]["n"]) + len(info["dead"]):
            raise ValueError("its shape does not match its rows")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:  # orjson: ValueError
        logging.getLogger(__name__).warning("index snapshot %s is unusable (%s): rebuilding",
                                            path.name, e)
        return None
    mem = MemoryIndex(index, info["kind"])
    rows = info["rows"]
    for n, i, lab, meta in zip(rows["n"], rows["id"], rows["label"], rows["metadata"],
                               strict=True):
        mem.name(n, i, lab, meta)
    mem.dead, mem.next, mem.recall = set(info["dead"]), info["next"], info.get("recall")
    return mem, info["seq"]
