"""The gallery in PostgreSQL with pgvector, for galleries that outgrow one machine or serve many
replicas: every replica reads and writes the same table, so an acknowledged change (committed
before the answer) is seen by every replica's next search and survives any replica's death.

One table per embedding space, named from the model id and precision, with an HNSW index over
inner product (vectors are unit-norm: inner product = cosine). The bundle's gallery is loaded
into it once, under an advisory lock, however many replicas start together.

Connections come from a pool (psycopg_pool) that checks each before lending it, so a database
that restarted is reconnected to on the next request; while it is unreachable every call is a
503 `storage_unavailable` and `healthy()` (which /readyz asks) is false.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator

import numpy as np

from simclr_embed.service.errors import StorageError
from simclr_embed.service.store import Filter, Neighbor, Space

log = logging.getLogger(__name__)


POOL_SIZE = 4  # the route threads that may wait on the database at once
POOL_WAIT_S = 5.0  # for a connection, before the caller gets a 503


def table_name(space: Space) -> str:
    digest = hashlib.sha256(f"{space.model_id}|{space.precision}".encode()).hexdigest()[:16]
    return f"gallery_{digest}"


class PgGallery:
    kind = "pgvector-hnsw"
    in_memory = False  # every search is a round trip: never on the event loop

    def __init__(self, space: Space, url: str, hnsw_m: int = 32, ef_search: int = 64) -> None:
        import psycopg
        from pgvector.psycopg import register_vector
        from psycopg_pool import ConnectionPool

        self.space, self.table, self.ef_search = space, table_name(space), ef_search
        self.hnsw_m = hnsw_m
        with psycopg.connect(url, autocommit=True) as db:  # the extension, before any vector
            self._schema(db)
        self.pool = ConnectionPool(url, min_size=1, max_size=POOL_SIZE, timeout=POOL_WAIT_S,
                                   kwargs={"autocommit": True}, configure=register_vector,
                                   check=ConnectionPool.check_connection, open=True)

    @contextlib.contextmanager
    def db(self) -> Iterator:
        """A pooled connection; the database unreachable is a 503, not a 500."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as db:
                yield db
        except (psycopg.OperationalError, PoolTimeout) as e:
            raise StorageError(f"the gallery database is unreachable ({type(e).__name__}); "
                               "retry shortly", headers={"Retry-After": "2"}) from e

    def healthy(self) -> bool:
        try:
            with self.db() as db:
                db.execute("SELECT 1")
            return True
        except StorageError:
            return False

    def _schema(self, db) -> None:
        from pgvector.psycopg import register_vector

        with db.transaction():  # replicas starting together would race on the DDL
            db.execute("SELECT pg_advisory_xact_lock(hashtext('simclr_embed_schema'))")
            db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            db.execute(
                "CREATE TABLE IF NOT EXISTS gallery_spaces (name TEXT PRIMARY KEY, model_id "
                "TEXT, precision TEXT, dim INT, loaded BOOLEAN NOT NULL DEFAULT FALSE)")
        register_vector(db)
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext('simclr_embed_schema'))")
            db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id TEXT PRIMARY KEY, "
                       f"label TEXT, embedding vector({self.space.dim}) NOT NULL, thumb BYTEA)")
            db.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS metadata JSONB")
            for column in ("origin", "fingerprint"):  # SQLiteStore says what they hold
                db.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS {column} TEXT")
            # What a selective filter's exact search reads instead of the whole table.
            db.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_label ON {self.table} (label)")
            db.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_metadata ON {self.table} "
                       "USING gin (metadata jsonb_path_ops)")

    def load(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        """The bundle's gallery, once per space: the first replica copies it in, others wait on
        the advisory lock and find it loaded."""
        with self.db() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            row = db.execute("SELECT loaded FROM gallery_spaces WHERE name = %s",
                             (self.table,)).fetchone()
            if row is None or not row[0]:
                # The HNSW build is ~10x slower once its graph spills out of this memory.
                db.execute("SET LOCAL maintenance_work_mem = '2GB'")
                db.execute("SET LOCAL max_parallel_maintenance_workers = 2")
                self._copy(db, ids, labels, emb)
                db.execute(
                    f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} USING hnsw "
                    f"(embedding vector_ip_ops) WITH (m = {self.hnsw_m})")
                db.execute(
                    "INSERT INTO gallery_spaces VALUES (%s, %s, %s, %s, TRUE) ON CONFLICT (name) "
                    "DO UPDATE SET loaded = TRUE",
                    (self.table, self.space.model_id, self.space.precision, self.space.dim))
                log.info("gallery: loaded %d bundle vectors into %s", len(ids), self.table)
        log.info("gallery: %d vectors in PostgreSQL table %s", self.size(), self.table)

    def _copy(self, db, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        with db.cursor().copy(
                f"COPY {self.table} (id, label, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["text", "text", "vector"])
            for i, lab, e in zip(ids, labels, emb, strict=True):
                cp.write_row((i, lab, e.astype(np.float32)))

    def close(self) -> None:
        self.pool.close()

    def recall_info(self) -> dict:
        """pgvector's HNSW at its ef_search; its recall is not measured here."""
        return {"exact": False, "recall_at_10": None, "ef_search": self.ef_search}

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        with self.db() as db:
            return db.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray,
            thumbs: list[bytes | None] | None = None,
            metas: list[dict | None] | None = None, origin: str | None = None,
            fingerprints: list[str] | None = None) -> None:
        from psycopg.types.json import Jsonb

        none = [None] * len(ids)
        with self.db() as db, db.transaction():
            db.cursor().executemany(
                f"INSERT INTO {self.table} (id, label, embedding, thumb, metadata, origin, "
                "fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                "SET label = EXCLUDED.label, embedding = EXCLUDED.embedding, "
                "thumb = EXCLUDED.thumb, metadata = EXCLUDED.metadata, "
                "origin = EXCLUDED.origin, fingerprint = EXCLUDED.fingerprint",
                [(i, lab, e.astype(np.float32), t, Jsonb(m) if m else None, origin, fp)
                 for i, lab, e, t, m, fp in zip(ids, labels, emb, thumbs or none,
                                                metas or none, fingerprints or none,
                                                strict=True)])

    def fingerprints(self, origin: str) -> dict[str, str]:
        """id -> fingerprint of the items `simclr-embed index` took from `origin`."""
        with self.db() as db:
            return dict(db.execute(f"SELECT id, fingerprint FROM {self.table} WHERE origin = "
                                   "%s", (origin,)).fetchall())

    def thumbnail(self, id_: str) -> bytes | None:
        with self.db() as db:
            row = db.execute(f"SELECT thumb FROM {self.table} WHERE id = %s",
                             (id_,)).fetchone()
        return None if row is None else row[0]

    def delete(self, ids: list[str]) -> list[str]:
        with self.db() as db:
            rows = db.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s) RETURNING id",
                              (ids,)).fetchall()
        return [r[0] for r in rows]

    def get(self, id_: str) -> tuple[str | None, np.ndarray, dict | None] | None:
        with self.db() as db:
            row = db.execute(f"SELECT label, embedding, metadata FROM {self.table} "
                             "WHERE id = %s", (id_,)).fetchone()
        if row is None:
            return None
        vec = row[1].to_numpy() if hasattr(row[1], "to_numpy") else row[1]  # pgvector's Vector
        return row[0], np.asarray(vec, np.float32), row[2]

    def changes(self) -> int:
        """The item count: the table keeps no change sequence, so a replacement goes unseen."""
        return self.size()

    def items(self) -> tuple[list[str], list[str | None], np.ndarray]:
        with self.db() as db:
            rows = db.execute(f"SELECT id, label, embedding FROM {self.table} "
                              "ORDER BY id").fetchall()
        vecs = [r[2].to_numpy() if hasattr(r[2], "to_numpy") else r[2] for r in rows]
        return ([r[0] for r in rows], [r[1] for r in rows],
                np.asarray(vecs, np.float32).reshape(len(rows), self.space.dim))

    def listing(self, after: str | None, limit: int) -> list[tuple[str, str | None]]:
        with self.db() as db:
            return db.execute(
                f"SELECT id, label FROM {self.table} WHERE %s::text IS NULL OR id > %s "
                "ORDER BY id LIMIT %s", (after, after, limit)).fetchall()

    def search(self, queries: np.ndarray, k: int,
               f: Filter | None = None) -> list[list[Neighbor]]:
        """Every query in one round trip (a LATERAL join over the array of queries). A filtered
        search is exact: pgvector's HNSW scan (0.6 here, no iterative scans) filters after it
        has found ef_search candidates, and so returns fewer than k when the filter is
        selective, as its users report. With the index scan off, the planner answers a
        selective filter from the label / metadata indexes (a bitmap scan of the matching rows)
        and a broad one with a sequential scan."""
        where, params = _where(f)
        vectors = list(np.asarray(queries, np.float32))
        with self.db() as db, db.transaction():
            db.execute(f"SET LOCAL hnsw.ef_search = {max(self.ef_search, k)}")
            if f is not None:
                db.execute("SET LOCAL enable_indexscan = off")
            rows = db.execute(
                "SELECT q.n, g.* FROM unnest(%s::vector[]) WITH ORDINALITY AS q(v, n) "
                "CROSS JOIN LATERAL (SELECT id, label, -(embedding <#> q.v) AS score, metadata "
                f"FROM {self.table} {where} ORDER BY embedding <#> q.v LIMIT %s) AS g "
                "ORDER BY q.n, g.score DESC", (vectors, *params, k)).fetchall()
        out: list[list[Neighbor]] = [[] for _ in vectors]
        for n, i, lab, s, m in rows:
            out[n - 1].append(Neighbor(i, lab, float(s), m))
        return out


def _where(f: Filter | None) -> tuple[str, list]:
    """The WHERE clause of a filter and its parameters: labels any of, and for each metadata
    key any of its values (JSON containment)."""
    from psycopg.types.json import Jsonb

    if f is None:
        return "", []
    conds, params = [], []
    if f.labels is not None:
        conds.append("label = ANY(%s)")
        params.append(list(f.labels))
    for name, values in f.metadata or ():
        conds.append("(" + " OR ".join(["metadata @> %s"] * len(values)) + ")")
        params += [Jsonb({name: v}) for v in values]
    return "WHERE " + " AND ".join(conds), params
