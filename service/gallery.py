"""The embedded gallery: the bundle's embeddings plus durable changes, searched with FAISS.

SQLite (WAL, synchronous=FULL) is the durable store of the changes made over the bundle's
gallery: each add or delete commits before the caller is answered, so it survives a kill -9 at
any instant, torn writes included. Every change gets the next number of one sequence; each
worker keeps the number it has applied and, before it answers a search, a listing or a change,
applies whatever other workers committed since. The database belongs to one embedding space
(model id, precision, dimension): opening it with another is refused.

FAISS inner product over unit vectors (cosine; service/index.py): exact (IndexFlatIP) for small
galleries, HNSW from AUTO_HNSW_FROM vectors of the whole gallery on (index="auto", the default),
back to exact below AUTO_FLAT_BELOW. When the size crosses one of them, or HNSW holds too many
tombstones, the new index is built in a background thread while the old one serves, then takes
the changes made meanwhile and is swapped in. A snapshot of the whole index (`<db>.index`) is
written after a rebuild, every SNAPSHOT_EVERY changes and at SIGTERM, so that a restart reads it
and applies only the changes since, in bulk. Searches run side by side under a shared lock;
applying changes takes it exclusively (writer-preferring); SQLite commits happen outside it.
PostgreSQL + pgvector (service/pg_gallery.py) replaces all of this when one machine is not
enough.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np

from simclr_embed.errors import UserError
from simclr_embed.service import index as snapshots
from simclr_embed.service.errors import StorageError, StorageFull
from simclr_embed.service.index import (
    MemoryIndex,
    changes_in_bulk,
    faiss,  # imported there with its loader quietened
)
from simclr_embed.service.recall import measure as measure_recall
from simclr_embed.service.store import Filter, Neighbor, Space

log = logging.getLogger(__name__)

AUTO_HNSW_FROM = 20_000  # below it exact search takes under 2 ms (docs/benchmarks.md, "Gallery")
AUTO_FLAT_BELOW = 10_000  # back to exact search: apart from the above, so no flapping
HNSW_DEAD_FRACTION = 0.25  # tombstones that make a rebuilt graph worth its cost
CHECKED_ENV = "SIMCLR_EMBED_GALLERY_CHECKED"  # set by service/startup.py for its workers
GROWTH = 2  # a gallery this many times the size its recall was measured at is measured again
SNAPSHOT_EVERY = 20_000  # changes applied since the last snapshot that call for a new one
PAGE_SIZE = 16_384


@contextlib.contextmanager
def _one_opener(path: Path) -> Iterator[None]:
    """One process or thread at a time opens the database (the workers of a swap to new
    weights create the new model's together): a new database is in rollback-journal mode until
    WAL is set, and there SQLite answers 'database is locked' at once instead of waiting."""
    with path.with_name(path.name + ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or its process dies
        yield


def gallery_path(data_dir: Path, space: Space) -> Path:
    """Each model's gallery lives in its own embedding space: the first model a data directory
    served keeps DATA_DIR/gallery-<precision>.sqlite3 (the layout of one-model servers); every
    other model, and a model swapped in with new weights, DATA_DIR/<model id>/."""
    shared = data_dir / f"gallery-{space.precision}.sqlite3"
    owner = _owner(shared)
    if owner in (None, space.model_id):
        return shared
    log.info("%s belongs to %s: the gallery of %s is in %s/", shared, owner, space.model_id,
             data_dir / space.model_id)
    return data_dir / space.model_id / shared.name


def _owner(db: Path) -> str | None:
    """The model a gallery database was made for; None when there is none yet, or when it
    cannot be read (the store's own checks then name the damage)."""
    if not db.exists() or db.stat().st_size == 0:
        return None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


class GalleryMismatch(UserError, RuntimeError):
    """The stored gallery belongs to another embedding space than the served model."""


class GalleryDamaged(UserError, RuntimeError):
    """The stored gallery is damaged or has lost acknowledged changes: refused at start."""


class SQLiteStore:
    """The durable part: meta (space, sequence) and items (id, label, vector or tombstone).

    Beside the database, `<db>.seq` keeps the last sequence number committed (written after
    each commit): a database found behind it lost acknowledged changes (an older copy put back,
    a deleted or cut -wal file, which SQLite would silently ignore) and is refused unless the
    loss is accepted. The mark may lag the database (it is not fsynced; several workers write
    it), never lead it, so it never refuses a whole gallery."""

    def __init__(self, path: Path, space: Space, accept_loss: bool = False,
                 check: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.mark_path = path, path.with_name(path.name + ".seq")
        with _one_opener(path):
            self._open(path, space, check)
        self._check_mark(accept_loss)

    def _open(self, path: Path, space: Space, check: bool) -> None:
        existed = path.exists() and path.stat().st_size > 0
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # A new file only (WAL fixes the size): a 2 KB vector row fills a 4 KB page, 7 of
            # them fill 16 KB, so the file is half as large, and so is quick_check's read.
            self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # the commit is on disk before the answer
            self.db.execute("PRAGMA busy_timeout=10000")  # other workers write too
            if existed and check:
                self._check()
            with self._write():
                self._schema()
            self._claim(space)
            # Reads (the sequence, changes, thumbnails) on a connection of their own: in WAL
            # mode they never wait for a commit in progress, so searches do not either.
            self.reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.read_lock = threading.Lock()
        except sqlite3.DatabaseError as e:
            raise GalleryDamaged(f"the gallery database {path} cannot be read ({e}): restore "
                                 "it from a backup (docs/gallery.md, \"Backup\") or move it "
                                 "away to start an empty gallery") from e

    def _schema(self) -> None:
        for statement in (
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, label TEXT, embedding "
                "BLOB, seq INTEGER NOT NULL, thumb BLOB)",
                "CREATE INDEX IF NOT EXISTS items_seq ON items (seq)"):
            self.db.execute(statement)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(items)")}
        # Columns newer than the gallery (metadata; origin and fingerprint: which SOURCE of
        # `simclr-embed index` a file came from, and its size and mtime there).
        for column in ("metadata", "origin", "fingerprint"):
            if column not in columns:
                self.db.execute(f"ALTER TABLE items ADD COLUMN {column} TEXT")

    def _check(self) -> None:
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("quick_check: " + "; ".join(problems))

    def _check_mark(self, accept_loss: bool) -> None:
        try:
            mark = int(self.mark_path.read_text())
        except (FileNotFoundError, ValueError):  # a new gallery, or a mark torn by a crash
            return
        have = self._seq(self.db)
        if mark <= have:
            return
        lost = (f"the gallery database {self.path} holds changes up to number {have}, but "
                f"{mark - have} more were acknowledged (up to {mark}, {self.mark_path.name}): "
                "the database or its -wal file lost committed changes")
        if not accept_loss:
            raise GalleryDamaged(lost + ". Restore the newest backup, or start once with "
                                 "SIMCLR_EMBED_ACCEPT_GALLERY_LOSS=true to accept the loss")
        log.warning("%s; starting anyway (SIMCLR_EMBED_ACCEPT_GALLERY_LOSS)", lost)
        self.write_mark(have)

    def write_mark(self, seq: int) -> None:
        """After a commit; a failure (a full disk) only lets the mark lag."""
        tmp = self.mark_path.with_name(f"{self.mark_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(str(seq))
            os.replace(tmp, self.mark_path)
        except OSError as e:
            log.warning("could not write %s: %s", self.mark_path, e)

    def close(self) -> None:
        """Checkpoint the WAL into the database, so the .sqlite3 file alone is whole."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.reader.close()
        self.db.close()

    def backup(self, dest: Path) -> int:
        """SQLite's online backup into dest (consistent while the server writes); the number
        of the last change it holds."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        out = sqlite3.connect(tmp)
        try:
            self.db.backup(out)
            seq = self._seq(out)
        finally:
            out.close()
        os.replace(tmp, dest)
        return seq

    def _claim(self, space: Space) -> None:
        want = {"model_id": space.model_id, "precision": space.precision, "dim": str(space.dim)}
        with self._write():
            for key, value in want.items():
                self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('seq', '0')")
        have = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if any(have[k] != v for k, v in want.items()):
            raise GalleryMismatch(
                f"the gallery in {self.path} belongs to model {have['model_id']} "
                f"({have['precision']}, {have['dim']}-d), but this server runs "
                f"{space.model_id} ({space.precision}, {space.dim}-d): its vectors live in "
                "another embedding space. Point SIMCLR_EMBED_DATA_DIR at another directory "
                "(or move this one away) to start an empty gallery for this model.")

    def _write(self):
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time across processes. A failed COMMIT
        (a full disk) rolls back, so the next write starts clean."""
        store = self

        class Tx:
            def __enter__(self) -> None:
                store.db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_) -> None:
                if exc_type:
                    store.db.execute("ROLLBACK")
                    return
                try:
                    store.db.execute("COMMIT")
                except sqlite3.Error:
                    with contextlib.suppress(sqlite3.Error):
                        store.db.execute("ROLLBACK")
                    raise

        return Tx()

    @staticmethod
    def _seq(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def seq(self) -> int:
        """The last change committed, by any worker."""
        with self.read_lock:
            return self._seq(self.reader)

    def thumbnail(self, id_: str) -> bytes | None:
        with self.read_lock:
            row = self.reader.execute("SELECT thumb FROM items WHERE id = ? AND embedding IS "
                                      "NOT NULL", (id_,)).fetchone()
        return None if row is None else row[0]

    def changes_since(self, seq: int) -> list[tuple]:
        """(id, label, vector bytes or None for a deletion, seq, metadata JSON), in commit
        order."""
        with self.read_lock:
            return self.reader.execute("SELECT id, label, embedding, seq, metadata FROM items "
                                       "WHERE seq > ? ORDER BY seq", (seq,)).fetchall()

    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray,
            thumbs: list[bytes | None] | None = None,
            metas: list[dict | None] | None = None, origin: str | None = None,
            fingerprints: list[str] | None = None) -> None:
        none = [None] * len(ids)
        with self._write():
            seq = self._seq(self.db)
            rows = [(i, lab, e.astype(np.float32).tobytes(), seq + n + 1, t,
                     json.dumps(m) if m else None, origin, fp)
                    for n, (i, lab, e, t, m, fp) in enumerate(zip(
                        ids, labels, emb, thumbs or none, metas or none, fingerprints or none,
                        strict=True))]
            self.db.executemany("INSERT OR REPLACE INTO items (id, label, embedding, seq, "
                                "thumb, metadata, origin, fingerprint) VALUES "
                                "(?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (seq + len(rows),))
        self.write_mark(seq + len(rows))

    def fingerprints(self, origin: str) -> dict[str, str]:
        """id -> fingerprint of the live items `simclr-embed index` took from `origin`."""
        with self.read_lock:
            return dict(self.reader.execute(
                "SELECT id, fingerprint FROM items WHERE origin = ? AND embedding IS NOT NULL",
                (origin,)).fetchall())

    def delete(self, ids: list[str], present: set[str]) -> list[str]:
        """Tombstones for the ids of `present` that no other worker deleted first."""
        done = []
        with self._write():
            seq = self._seq(self.db)
            for i in ids:
                if i not in present:
                    continue
                row = self.db.execute("SELECT embedding IS NULL FROM items WHERE id = ?",
                                      (i,)).fetchone()
                if row is not None and row[0]:
                    continue  # deleted by another worker since our last catch-up
                seq += 1
                self.db.execute("INSERT OR REPLACE INTO items (id, seq) VALUES (?, ?)",
                                (i, seq))
                done.append(i)
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (seq,))
        self.write_mark(seq)
        return done


class RWLock:
    """Many readers or one writer (FAISS searches may run concurrently; changes may not).
    Writer-preferring: once a writer waits, new readers wait behind it, so sustained search
    load cannot starve a change."""

    def __init__(self) -> None:
        self.cond, self.readers, self.writing, self.waiting = threading.Condition(), 0, False, 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self.cond:
            self.cond.wait_for(lambda: not self.writing and not self.waiting)
            self.readers += 1
        try:
            yield
        finally:
            with self.cond:
                self.readers -= 1
                self.cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self.cond:
            self.waiting += 1
            self.cond.wait_for(lambda: not self.writing and self.readers == 0)
            self.waiting -= 1
            self.writing = True
        try:
            yield
        finally:
            with self.cond:
                self.writing = False
                self.cond.notify_all()


@contextlib.contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """SQLite's failures to write, as the service's errors: a full disk is a 507, an I/O error
    or a database other workers hold too long a 503; the change was rolled back either way."""
    try:
        yield
    except sqlite3.OperationalError as e:
        name = getattr(e, "sqlite_errorname", "")
        if name == "SQLITE_FULL" or "full" in str(e):
            raise StorageFull(f"the gallery's disk is full ({path.parent}): nothing was "
                              "changed; free space there and retry") from e
        raise StorageError(f"the gallery store could not write ({e}): nothing was changed; "
                           "retry shortly", headers={"Retry-After": "1"}) from e


class Gallery:
    in_memory = True  # searches never wait on I/O: the engine may run one on the event loop

    def __init__(self, space: Space, db_path: Path, index: str = "auto", hnsw_m: int = 32,
                 ef_search: int = 64, accept_loss: bool = False, faiss_threads: int = 1,
                 recall_target: float = 0.98) -> None:
        self.space, self.db_path, self.requested = space, db_path, index
        self.recall_target = recall_target
        self.accept_loss = accept_loss
        self.hnsw_m, self.ef_search, self.faiss_threads = hnsw_m, ef_search, faiss_threads
        self.kind = index
        self._mem: MemoryIndex | None = None  # load() makes it: see .mem
        self.applied, self.saved = 0, 0
        self.bundle_key = ""
        self.snapshot = db_path.with_name(db_path.stem + ".index")
        self.rebuilding: threading.Thread | None = None
        self.snapshotting: threading.Thread | None = None  # close() waits for it
        self.save_lock = threading.Lock()  # one snapshot writer at a time in this process
        self.closing = False
        self.lock = RWLock()
        self.db_lock = threading.Lock()  # the writing connection, used from several threads
        self._store: SQLiteStore | None = None  # load() opens it: see .store

    @property
    def mem(self) -> MemoryIndex:
        if self._mem is None:
            raise RuntimeError("the gallery is used before load()")
        return self._mem

    @property
    def store(self) -> SQLiteStore:
        if self._store is None:
            raise RuntimeError("the gallery is used before load()")
        return self._store

    def _want(self, n: int, now: str | None = None) -> str:
        """The index kind for n vectors: the setting, or by size with some hysteresis."""
        if self.requested != "auto":
            return self.requested
        measured = self._mem.recall if self._mem is not None else None
        if measured and measured["exact_cheaper"] and n < GROWTH * measured["size"]:
            return "flat"  # the graph could not beat exact search on this data (recall.py)
        if now == "hnsw":
            return "flat" if n < AUTO_FLAT_BELOW else "hnsw"
        return "hnsw" if n >= AUTO_HNSW_FROM else "flat"

    def _new_index(self, kind: str) -> faiss.Index:
        if kind == "hnsw":
            # efSearch is not set here: every search passes its own (service/index.py).
            base = faiss.IndexHNSWFlat(self.space.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            base = faiss.IndexFlatIP(self.space.dim)
        return faiss.IndexIDMap2(base)

    def _bundle_index(self, emb: np.ndarray, key: str) -> faiss.Index:
        """The index over the bundle's vectors (internal ids 0..n-1); an HNSW graph is read from
        its cache file when one was built for these very vectors and parameters."""
        self.kind = self._want(len(emb))
        index = self._new_index(self.kind)
        if self.kind != "hnsw" or len(emb) == 0:
            index.add_with_ids(emb, np.arange(len(emb), dtype=np.int64))
            return index
        path = self.db_path.parent / f"hnsw-{key[:16]}-m{self.hnsw_m}.faiss"
        if path.exists():
            with contextlib.suppress(RuntimeError):  # a damaged cache is rebuilt
                cached = faiss.read_index(str(path))
                if cached.ntotal == len(emb):
                    log.info("gallery: HNSW graph read from %s", path.name)
                    return cached
        index.add_with_ids(emb, np.arange(len(emb), dtype=np.int64))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)  # workers starting together each write whole files
        return index

    def __len__(self) -> int:
        return len(self.mem)

    def _catch_up(self) -> None:
        """Apply, in bulk, what any worker committed since this one last looked (caller holds
        the write lock)."""
        self._threads()
        if self.store.seq() == self.applied:
            return
        changes = self.store.changes_since(self.applied)
        if changes:
            changes_in_bulk(changes, self.mem)
            self.applied = changes[-1][3]
            self._maybe_rebuild()

    def _threads(self) -> None:
        """FAISS's OpenMP thread count, set in the calling thread: libgomp keeps it per thread,
        so a count set once in the loading thread left every other (the event loop, the search
        threads) on one per core, and OpenMP workers spinning after each search took the CPU
        from numpy's: a 1 % filter at 200k took 8 ms instead of 1."""
        faiss.omp_set_num_threads(self.faiss_threads)

    # --- the API the routes use -------------------------------------------------------------
    def load(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        """The snapshot of the whole index if there is a sound one, else the bundle's gallery;
        then every stored change since, in bulk. An index of the wrong kind for the size is
        rebuilt in the background while this one serves."""
        # `simclr-embed serve` ran quick_check (a read of the whole file) before the workers.
        self._threads()
        checked = str(self.db_path) in os.environ.get(CHECKED_ENV, "").split("\n")
        self._store = SQLiteStore(self.db_path, self.space, self.accept_loss, not checked)
        emb = np.ascontiguousarray(emb, np.float32)
        self.bundle_key = hashlib.sha256(emb.tobytes() + "\0".join(ids).encode()).hexdigest()
        for orphan in snapshots.remove_orphans(self.snapshot):
            log.info("gallery: removed %s, left by a snapshot writer that died", orphan.name)
        found = self._sound_snapshot()
        if found is not None:
            (self._mem, self.applied), self.kind = found, found[0].kind
            log.info("gallery: index snapshot read (%s, %d changes)", self.kind, self.applied)
        else:
            self._mem = MemoryIndex(self._bundle_index(emb, self.bundle_key), self.kind)
            self.mem.add(ids, labels, emb, in_index=True)
        self.saved = self.applied
        with self.lock.write():
            self._catch_up()
        if self.mem.kind == "hnsw" and self.mem.recall is None:
            self._tune(self.mem)
            with self.lock.write():
                self._maybe_rebuild()  # exact search, if it turned out cheaper
        log.info("gallery: %d vectors (%d stored changes applied, %s, %s)", len(self),
                 self.applied, self.db_path.name, self.recall_line())

    def _sound_snapshot(self) -> tuple[MemoryIndex, int] | None:
        """The snapshot, when it holds the database's own history. One ahead of the database
        (a backup put back, an accepted loss) saw changes the database no longer has: it is
        removed, not only skipped, since the numbers of later writes would pass it and a
        restart would read it as sound."""
        found = snapshots.load(self.snapshot, self.space.dim, self.bundle_key)
        if found is None:
            return None
        if self.accept_loss or found[1] > self.store.seq():
            log.warning("gallery: index snapshot %s holds changes up to %d, the database up to "
                        "%d%s: removed, the index is rebuilt", self.snapshot.name, found[1],
                        self.store.seq(), " (a loss was accepted)" if self.accept_loss else "")
            self.snapshot.unlink(missing_ok=True)
            return None
        return found

    def _maybe_rebuild(self) -> None:
        """After a catch-up (write lock held): start a background rebuild when the kind no
        longer fits the size or HNSW holds too many tombstones."""
        mem = self.mem
        want = self._want(len(mem), mem.kind)
        stale = mem.kind == "hnsw" and len(mem.dead) > HNSW_DEAD_FRACTION * mem.index.ntotal
        grown = mem.kind == "hnsw" and mem.recall is not None \
            and len(mem) >= GROWTH * mem.recall["size"]
        if self.rebuilding is None and (want != mem.kind or stale or grown):
            self.rebuilding = threading.Thread(target=self._rebuild, args=(want,),
                                               name="gallery-rebuild", daemon=True)
            self.rebuilding.start()
        elif self.rebuilding is None and self.applied - self.saved >= SNAPSHOT_EVERY:
            self.saved = self.applied
            self.snapshotting = threading.Thread(target=self.save, name="gallery-snapshot",
                                                 daemon=True)
            self.snapshotting.start()

    def _rebuild(self, kind: str) -> None:
        """Builds the new index with no lock held (searches and writes go on over the old one),
        then, under the write lock, applies the changes made meanwhile and swaps it in."""
        self._threads()
        try:
            with self.lock.read():  # the live rows copied out, then built with no lock held
                seq, rows, vecs = self.applied, *self.mem.live()
            fresh = self._built(kind, rows, vecs)
            if kind == "flat" and (self.mem.recall or {}).get("exact_cheaper"):
                fresh.recall = self.mem.recall  # kept: exact search serves until it grows
            if kind == "hnsw":
                self._tune(fresh)
                if fresh.recall and fresh.recall["exact_cheaper"] and self.requested == "auto":
                    measured, kind = fresh.recall, "flat"
                    fresh = self._built(kind, rows, vecs)
                    fresh.recall = measured  # kept: _want serves exact until it grows
            with self.lock.write():
                if self.closing:
                    return
                changes = self.store.changes_since(seq)
                changes_in_bulk(changes, fresh)
                self._mem, self.kind = fresh, kind
                if changes:  # they may go past what the old index had applied
                    self.applied = max(self.applied, changes[-1][3])
                self.saved = self.applied
            log.info("gallery: index rebuilt as %s over %d vectors", kind, len(fresh))
            self.save()
        except Exception:
            log.exception("gallery: index rebuild failed; the old index goes on serving")
        finally:
            self.rebuilding = None

    def _built(self, kind: str, rows: list, vecs: np.ndarray) -> MemoryIndex:
        fresh = MemoryIndex(self._new_index(kind), kind)
        fresh.add([r[0] for r in rows], [r[1] for r in rows], vecs, [r[2] for r in rows])
        return fresh

    def _tune(self, mem: MemoryIndex) -> None:
        """Measure an HNSW index's recall and the efSearch that meets the target; on an index
        no search sees yet, or with the writers held off by the caller."""
        if len(mem) == 0:
            return
        mem.recall = measure_recall(mem, self.recall_target, self.ef_search).as_dict()
        log.info("gallery: %s", self.recall_line(mem))

    def recall_line(self, mem: MemoryIndex | None = None) -> str:
        r = self.recall_info(mem)
        if r["exact"]:
            return "exact search" + (f" (HNSW measured at recall@10 {r['hnsw']['recall_at_10']:.3f}"
                                     f" with efSearch {r['hnsw']['ef_search']}: exact is "
                                     "cheaper)" if r.get("hnsw") else "")
        if r["recall_at_10"] is None:
            return f"HNSW, efSearch {r['ef_search']}, recall not measured"
        return (f"HNSW recall@10 {r['recall_at_10']:.3f} (target {self.recall_target}) with "
                f"efSearch {r['ef_search']}, measured {r['measured_at']}")

    def recall_info(self, mem: MemoryIndex | None = None) -> dict:
        """What /v1/model reports: the recall searches get, the efSearch in use, and when it
        was measured."""
        mem = mem or self.mem
        if mem.kind == "flat":
            return {"exact": True, "recall_at_10": 1.0, "ef_search": None,
                    **({"hnsw": mem.recall} if mem.recall else {})}
        r = mem.recall or {}
        return {"exact": False, "recall_at_10": r.get("recall_at_10"),
                "self_hit": r.get("self_hit"), "ef_search": self._ef(mem),
                "target": self.recall_target, "measured_at": r.get("measured_at"),
                "measured_size": r.get("size")}

    def _ef(self, mem: MemoryIndex) -> int:
        return (mem.recall or {}).get("ef_search") or self.ef_search

    def save(self) -> None:
        """Write the index snapshot: copied under the read lock (a memory copy, so writers,
        and the readers a waiting writer holds back, wait for that only), written without."""
        try:
            with self.save_lock:  # the rebuild, the snapshot thread and close() write in turn
                with self.lock.read():
                    mem, seq = self.mem.frozen(), self.applied
                snapshots.save(mem, seq, self.bundle_key, self.snapshot)
        except (OSError, RuntimeError) as e:  # a full disk: the next start rebuilds
            log.warning("gallery: index snapshot not written: %s", e)

    def _fresh(self) -> None:
        """Apply other workers' changes, if there are any, before reading."""
        if self.store.seq() != self.applied:
            with self.lock.write():
                self._catch_up()

    def healthy(self) -> bool:
        return True  # a local file: its faults surface as the errors of each write

    def close(self) -> None:
        """At SIGTERM: the index snapshot (a fast next start), then the WAL checkpoint. A
        rebuild still building is not waited for (an HNSW graph over 200k vectors takes
        minutes): it finds the gallery closed and stops; one already saving holds save_lock."""
        self.closing = True
        if self.snapshotting is not None:
            self.snapshotting.join()  # a daemon: killed half-written at exit otherwise
        if self._mem is not None and self.applied != self.saved:
            self.save()
        with self.save_lock:  # a rebuild's snapshot being written is finished, not cut
            pass
        with self.db_lock:
            if self._store is not None:
                self.store.close()

    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray,
            thumbs: list[bytes | None] | None = None,
            metas: list[dict | None] | None = None, origin: str | None = None,
            fingerprints: list[str] | None = None) -> None:
        # The commit (and its busy wait on other workers) runs outside the in-memory lock, so
        # searches go on meanwhile; the catch-up applies it in commit order.
        with self.db_lock, storage_errors(self.db_path):
            self.store.add(ids, labels, emb, thumbs, metas, origin, fingerprints)
        with self.lock.write():
            self._catch_up()

    def fingerprints(self, origin: str) -> dict[str, str]:
        return self.store.fingerprints(origin)

    def thumbnail(self, id_: str) -> bytes | None:
        """The PNG stored with an added item, if it came with an image."""
        return self.store.thumbnail(id_)

    def delete(self, ids: list[str]) -> list[str]:
        """Deletes those of `ids` that exist; returns them."""
        self._fresh()
        with self.lock.read():
            present = set(self.mem.by_id) & set(ids)
        with self.db_lock, storage_errors(self.db_path):
            done = self.store.delete(ids, present)  # skips what another worker deleted first
        with self.lock.write():
            self._catch_up()
        return done

    def get(self, id_: str) -> tuple[str | None, np.ndarray, dict | None] | None:
        """(label, vector, metadata) of one item, or None."""
        self._fresh()
        with self.lock.read():
            return self.mem.vector(id_)

    def listing(self, after: str | None, limit: int) -> list[tuple[str, str | None]]:
        """(id, label) in id order, starting after `after`."""
        self._fresh()
        with self.lock.read():
            return self.mem.page(after, limit)

    def size(self) -> int:
        self._fresh()
        return len(self.mem)

    def changes(self) -> int:
        self._fresh()
        return self.applied

    def items(self) -> tuple[list[str], list[str | None], np.ndarray]:
        self._fresh()
        with self.lock.read():
            rows, vecs = self.mem.live()
        return [r[0] for r in rows], [r[1] for r in rows], vecs

    def search(self, queries: np.ndarray, k: int,
               f: Filter | None = None) -> list[list[Neighbor]]:
        """queries (Q, D) unit-norm -> k best neighbours each (among those `f` lets through),
        best first."""
        self._fresh()
        self._threads()
        with self.lock.read():
            return self.mem.search(queries, k, f, self._ef(self.mem))
