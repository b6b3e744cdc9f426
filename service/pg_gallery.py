"""The gallery in PostgreSQL with pgvector, for galleries that outgrow one machine or serve many
replicas: every replica reads and writes the same table, so an acknowledged change (committed
before the answer) is seen by every replica's next search and survives any replica's death.

One table per embedding space, named from the model id and precision, with an HNSW index over
inner product (vectors are unit-norm: inner product = cosine). The bundle's gallery is loaded
into it once, under an advisory lock, however many replicas start together.
"""

from __future__ import annotations

import hashlib
import logging
import threading

import numpy as np

from simclr_embed.service.gallery import Neighbor, Space

log = logging.getLogger(__name__)


def table_name(space: Space) -> str:
    digest = hashlib.sha256(f"{space.model_id}|{space.precision}".encode()).hexdigest()[:16]
    return f"gallery_{digest}"


class PgGallery:
    kind = "pgvector-hnsw"

    def __init__(self, space: Space, url: str, hnsw_m: int = 32, ef_search: int = 64) -> None:
        import psycopg
        from pgvector.psycopg import register_vector

        self.space, self.table, self.ef_search = space, table_name(space), ef_search
        self.hnsw_m = hnsw_m
        self.db = psycopg.connect(url, autocommit=True)
        self.lock = threading.Lock()  # one connection, one statement at a time
        with self.db.transaction():  # replicas starting together would race on the DDL
            self.db.execute("SELECT pg_advisory_xact_lock(hashtext('simclr_embed_schema'))")
            self.db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS gallery_spaces (name TEXT PRIMARY KEY, model_id "
                "TEXT, precision TEXT, dim INT, loaded BOOLEAN NOT NULL DEFAULT FALSE)")
        register_vector(self.db)
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(hashtext('simclr_embed_schema'))")
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id TEXT PRIMARY KEY, "
                            f"label TEXT, embedding vector({space.dim}) NOT NULL, thumb BYTEA)")

    def load(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        """The bundle's gallery, once per space: the first replica copies it in, others wait on
        the advisory lock and find it loaded."""
        with self.lock, self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            row = self.db.execute("SELECT loaded FROM gallery_spaces WHERE name = %s",
                                  (self.table,)).fetchone()
            if row is None or not row[0]:
                # The HNSW build is ~10x slower once its graph spills out of this memory.
                self.db.execute("SET LOCAL maintenance_work_mem = '2GB'")
                self.db.execute("SET LOCAL max_parallel_maintenance_workers = 2")
                self._copy(ids, labels, emb)
                self.db.execute(
                    f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} USING hnsw "
                    f"(embedding vector_ip_ops) WITH (m = {self.hnsw_m})")
                self.db.execute(
                    "INSERT INTO gallery_spaces VALUES (%s, %s, %s, %s, TRUE) ON CONFLICT (name) "
                    "DO UPDATE SET loaded = TRUE",
                    (self.table, self.space.model_id, self.space.precision, self.space.dim))
                log.info("gallery: loaded %d bundle vectors into %s", len(ids), self.table)
        log.info("gallery: %d vectors in PostgreSQL table %s", self.size(), self.table)

    def _copy(self, ids: list[str], labels: list[str | None], emb: np.ndarray) -> None:
        with self.db.cursor().copy(
                f"COPY {self.table} (id, label, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["text", "text", "vector"])
            for i, lab, e in zip(ids, labels, emb, strict=True):
                cp.write_row((i, lab, e.astype(np.float32)))

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        with self.lock:
            return self.db.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray,
            thumbs: list[bytes | None] | None = None) -> None:
        thumbs = thumbs or [None] * len(ids)
        with self.lock, self.db.transaction():
            self.db.cursor().executemany(
                f"INSERT INTO {self.table} VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                "SET label = EXCLUDED.label, embedding = EXCLUDED.embedding, "
                "thumb = EXCLUDED.thumb",
                [(i, lab, e.astype(np.float32), t)
                 for i, lab, e, t in zip(ids, labels, emb, thumbs, strict=True)])

    def thumbnail(self, id_: str) -> bytes | None:
        with self.lock:
            row = self.db.execute(f"SELECT thumb FROM {self.table} WHERE id = %s",
                                  (id_,)).fetchone()
        return None if row is None else row[0]

    def delete(self, ids: list[str]) -> list[str]:
        with self.lock:
            rows = self.db.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s) RETURNING id",
                                   (ids,)).fetchall()
        return [r[0] for r in rows]

    def get(self, id_: str) -> tuple[str | None, np.ndarray] | None:
        with self.lock:
            row = self.db.execute(f"SELECT label, embedding FROM {self.table} WHERE id = %s",
                                  (id_,)).fetchone()
        if row is None:
            return None
        vec = row[1].to_numpy() if hasattr(row[1], "to_numpy") else row[1]  # pgvector's Vector
        return row[0], np.asarray(vec, np.float32)

    def listing(self, after: str | None, limit: int) -> list[tuple[str, str | None]]:
        with self.lock:
            return self.db.execute(
                f"SELECT id, label FROM {self.table} WHERE %s::text IS NULL OR id > %s "
                "ORDER BY id LIMIT %s", (after, after, limit)).fetchall()

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbor]]:
        out = []
        with self.lock, self.db.transaction():
            self.db.execute(f"SET LOCAL hnsw.ef_search = {max(self.ef_search, k)}")
            for q in np.asarray(queries, np.float32):
                rows = self.db.execute(
                    f"SELECT id, label, -(embedding <#> %s) FROM {self.table} "
                    "ORDER BY embedding <#> %s LIMIT %s", (q, q, k)).fetchall()
                out.append([Neighbor(i, lab, float(s)) for i, lab, s in rows])
        return out
