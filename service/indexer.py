"""`simclr-embed index SOURCE`: a user's images into the gallery that `simclr-embed serve` uses.

list (folder, .tar/.tar.gz or manifest) -> skip what is already there -> read -> decode (threads,
a bounded queue) -> embed (the bundle's runtime, batches of 64) -> write (one commit per batch).

An item's id is its path relative to SOURCE (or the manifest's `id`); beside its vector the
store keeps where it came from (`origin`: the resolved SOURCE) and the file's size and mtime
(`fingerprint`), committed with it. A rerun therefore skips unchanged files and re-embeds
changed ones, and a run killed at any moment leaves whole batches only: run again, every file
is there exactly once (ids are the stores' primary keys). Decoding and its limits are the
service's own (service/preprocess.py). The running server sees the new items through the change
sequence it follows (SQLite) or at once (PostgreSQL).
"""

from __future__ import annotations

import csv
import json
import logging
import tarfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from simclr_embed.errors import UserError
from simclr_embed.service.bundle import load_bundle, model_id
from simclr_embed.service.errors import PayloadTooLarge, ServiceError, StorageError
from simclr_embed.service.gallery import SQLiteStore, gallery_path, storage_errors
from simclr_embed.service.index_job import IndexJob
from simclr_embed.service.page import png_bytes
from simclr_embed.service.preprocess import decode_image
from simclr_embed.service.runtime import CHOICE_FILE, open_runtime
from simclr_embed.service.schemas import MAX_ID_CHARS, MAX_METADATA_BYTES, MAX_METADATA_KEYS
from simclr_embed.service.settings import Settings
from simclr_embed.service.store import GalleryWriter, Space

log = logging.getLogger(__name__)

BATCH = 64  # the engine's batch: one model run and one commit
MANIFESTS = (".csv", ".jsonl", ".parquet")


class IndexingError(UserError, RuntimeError):
    """The job could not index anything: a bad SOURCE, or every file failed."""


@dataclass(frozen=True)
class Entry:
    id: str
    label: str | None
    fingerprint: str  # "size:mtime_ns" of the file (of the member, in an archive)
    path: str  # on disk, or the member's name in an archive
    size: int
    metadata: dict[str, Any] | None = None


@dataclass
class Source:
    """What SOURCE lists: its entries, the files it could not list, and how to read them."""
    origin: str
    entries: list[Entry]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id or row, reason)
    archive: Path | None = None


# --- listing --------------------------------------------------------------------------------
def _label(rel: Path, labels: bool) -> str | None:
    return rel.parts[0] if labels and len(rel.parts) > 1 else None


def list_folder(root: Path, labels: bool = True) -> Source:
    """Every file under root (recursively; hidden ones aside), id = its path relative to root."""
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        st = path.stat()
        entries.append(Entry(rel.as_posix(), _label(rel, labels),
                             f"{st.st_size}:{st.st_mtime_ns}", str(path), st.st_size))
    return Source(str(root.resolve()), entries)


def list_archive(path: Path, labels: bool = True) -> Source:
    """The files of a tar archive; one folder that holds them all is taken as its root."""
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    names = [Path(m.name.removeprefix("./")) for m in members]
    tops = {n.parts[0] for n in names if len(n.parts) > 1}
    strip = len(tops) == 1 and all(len(n.parts) > 1 for n in names)
    entries = []
    for m, name in zip(members, names, strict=True):
        rel = Path(*name.parts[1:]) if strip else name
        if any(part.startswith(".") for part in rel.parts):
            continue
        entries.append(Entry(rel.as_posix(), _label(rel, labels), f"{m.size}:{m.mtime}", m.name,
                             m.size))
    return Source(str(path.resolve()), entries, archive=path)


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise IndexingError("a Parquet manifest needs pyarrow: pip install pyarrow") from None
    return pq.read_table(path).to_pylist()


def list_manifest(path: Path, path_column: str = "path") -> Source:
    """Rows with a path column (relative to the manifest's folder) and optional id and label;
    every other column becomes the item's metadata."""
    rows = _manifest_rows(path)
    if rows and path_column not in rows[0]:
        raise IndexingError(f"{path} has no {path_column!r} column (its columns: "
                            f"{', '.join(rows[0])}); name the column with --path-column")
    source = Source(str(path.resolve()), [])
    for n, row in enumerate(rows, 1):
        where = f"row {n}"
        file = row.pop(path_column, None)
        id_ = str(row.pop("id", None) or file)
        label = row.pop("label", None)
        meta = {k: v for k, v in row.items() if v is not None} or None
        if not file:
            source.rejected.append((where, f"no {path_column!r}"))
            continue
        full = (path.parent / str(file)).resolve()
        try:
            st = full.stat()
        except OSError as e:
            source.rejected.append((id_, f"cannot read {file}: {e.strerror}"))
            continue
        source.entries.append(Entry(id_, None if label is None else str(label),
                                    f"{st.st_size}:{st.st_mtime_ns}", str(full), st.st_size,
                                    meta))
    return source


def list_source(source: Path, labels: bool = True, path_column: str = "path") -> Source:
    if source.is_dir():
        return list_folder(source, labels)
    if source.suffix in MANIFESTS and source.is_file():
        return list_manifest(source, path_column)
    if source.is_file() and tarfile.is_tarfile(source):
        return list_archive(source, labels)
    raise IndexingError(f"{source} is not an image folder, a .tar/.tar.gz of one or a "
                        f"manifest ({', '.join(MANIFESTS)})")


def check_entries(source: Source, max_label_chars: int) -> list[Entry]:
    """The entries the gallery would accept as POST /v1/gallery does; the rest are rejected."""
    good, seen = [], set()
    for e in source.entries:
        meta_bytes = len(json.dumps(e.metadata)) if e.metadata else 0
        reason = (
            "duplicate id" if e.id in seen else
            f"id longer than {MAX_ID_CHARS} characters" if len(e.id) > MAX_ID_CHARS else
            f"label longer than {max_label_chars} characters"
            if len(e.label or "") > max_label_chars else
            f"metadata over {MAX_METADATA_KEYS} keys or {MAX_METADATA_BYTES} bytes"
            if e.metadata and (len(e.metadata) > MAX_METADATA_KEYS
                               or meta_bytes > MAX_METADATA_BYTES) else
            "metadata values must be strings, numbers or booleans"
            if e.metadata and any(isinstance(v, dict | list) for v in e.metadata.values())
            else None)
        seen.add(e.id)
        if reason:
            source.rejected.append((e.id, reason))
        else:
            good.append(e)
    return good


# --- reading and decoding -------------------------------------------------------------------
def read_files(source: Source, todo: list[Entry], max_bytes: int
               ) -> Iterator[tuple[Entry, bytes | Exception]]:
    """(entry, its bytes or why they could not be read), in the order of `todo` (of the
    archive, for one: a compressed tar reads front to back)."""
    if source.archive is None:
        for e in todo:
            if e.size > max_bytes:
                yield e, PayloadTooLarge(f"{e.size} bytes, over the {max_bytes} byte limit")
                continue
            try:
                yield e, Path(e.path).read_bytes()
            except OSError as err:
                yield e, err
        return
    wanted = {e.path: e for e in todo}
    with tarfile.open(source.archive) as tar:
        for m in tar:
            e = wanted.get(m.name)
            if e is None:
                continue
            if e.size > max_bytes:
                yield e, PayloadTooLarge(f"{e.size} bytes, over the {max_bytes} byte limit")
                continue
            yield e, tar.extractfile(m).read()  # type: ignore[union-attr]


@dataclass
class Decoded:
    entries: list[Entry]
    pixels: np.ndarray  # (n, S, S, 3) uint8
    thumbs: list[bytes]
    skipped: list[tuple[Entry, str]]


def decode_chunk(chunk: list[tuple[Entry, bytes | Exception]], size: int, settings: Settings
                 ) -> Decoded:
    """The service's decoder and limits over one batch; what fails is skipped with its reason."""
    ok, pixels, skipped = [], [], []
    for e, raw in chunk:
        try:
            if isinstance(raw, Exception):
                raise raw
            pixels.append(decode_image(raw, size, settings.max_image_pixels,
                                       settings.max_image_aspect, settings.max_decode_mb))
            ok.append(e)
        except ServiceError as err:
            skipped.append((e, err.message))
        except OSError as err:
            skipped.append((e, f"cannot read: {err.strerror or err}"))
    arr = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return Decoded(ok, arr, [png_bytes(p) for p in arr], skipped)


def chunks(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def decoded_batches(stream: Iterable[tuple[Entry, bytes | Exception]], size: int,
                    settings: Settings, threads: int) -> Iterator[Decoded]:
    """Batches decoded by a thread pool while the caller embeds the previous ones; at most
    2 x threads batches in flight, so memory stays bounded whatever the collection's size."""
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        ahead: deque[Future[Decoded]] = deque()
        for chunk in chunks(stream, BATCH):
            ahead.append(pool.submit(decode_chunk, chunk, size, settings))
            if len(ahead) >= 2 * threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


# --- the target -----------------------------------------------------------------------------
def add_args(d: Decoded, emb: np.ndarray, origin: str) -> tuple:
    """The arguments of GalleryWriter.add for one decoded batch."""
    return ([e.id for e in d.entries], [e.label for e in d.entries], emb, list(d.thumbs),
            [e.metadata for e in d.entries], origin, [e.fingerprint for e in d.entries])


class SQLiteWriter:
    """The embedded gallery's database, written as the server writes it but without its
    in-memory index (a server beside it applies the new changes before its next answer)."""

    def __init__(self, settings: Settings, space: Space) -> None:
        self.path = gallery_path(settings.data_dir, space)  # the one the server opens
        self.store = SQLiteStore(self.path, space, settings.accept_gallery_loss)

    def add(self, ids: list[str], labels: list[str | None], emb: np.ndarray,
            thumbs: list[bytes | None] | None = None,
            metas: list[dict | None] | None = None, origin: str | None = None,
            fingerprints: list[str] | None = None) -> None:
        with storage_errors(self.path):
            self.store.add(ids, labels, emb, thumbs, metas, origin, fingerprints)

    def delete(self, ids: list[str]) -> list[str]:
        """ids come from `fingerprints`: all present (the store skips any deleted since)."""
        with storage_errors(self.path):
            return self.store.delete(ids, set(ids))

    def fingerprints(self, origin: str) -> dict[str, str]:
        return self.store.fingerprints(origin)

    def close(self) -> None:
        self.store.close()


def open_writer(settings: Settings, space: Space) -> GalleryWriter:
    """The gallery the server with these settings serves: PostgreSQL or the embedded store."""
    if settings.gallery_url is None:
        return SQLiteWriter(settings, space)
    import psycopg

    from simclr_embed.service.pg_gallery import PgGallery

    try:
        return PgGallery(space, settings.gallery_url.get_secret_value(), settings.hnsw_m,
                         settings.hnsw_ef_search)
    except psycopg.OperationalError as e:
        raise StorageError(f"cannot reach the gallery database "
                           f"(SIMCLR_EMBED_GALLERY_URL): {e}") from e


# --- the job --------------------------------------------------------------------------------
def pick_bundle(settings: Settings, model: str | None) -> Path:
    """The bundle of the model to index for, chosen as the server chooses it: by model id or
    bundle directory name among the bundles these settings serve, the first by default."""
    dirs = settings.bundle_dirs()
    if model is None:
        return dirs[0]
    ids = {}
    for d in dirs:
        try:
            ids[d] = model_id(json.loads((d / "manifest.json").read_text()))
        except (OSError, ValueError, KeyError):
            continue  # load_bundle names what is wrong with it when it is the one chosen
        if model in (ids[d], d.name):
            return d
    raise IndexingError(f"model {model!r} is not served with these settings; they serve "
                        + ", ".join(f"{ids.get(d, '?')} ({d.name})" for d in dirs))


def run_index(job: IndexJob, settings: Settings) -> dict[str, Any]:
    """Index SOURCE into the gallery; returns (and writes) the report."""
    started = time.perf_counter()
    source = list_source(job.source, job.labels, job.path_column)
    listed = len(source.entries) + len(source.rejected)
    entries = check_entries(source, settings.max_label_chars)
    bundle = load_bundle(pick_bundle(settings, job.model))
    space = Space(model_id(bundle.manifest), settings.precision,
                  int(bundle.manifest["embedding_dim"]))
    writer = open_writer(settings, space)  # GalleryMismatch for another model's gallery
    try:
        have = writer.fingerprints(source.origin)
        todo = [e for e in entries if have.get(e.id) != e.fingerprint]
        gone = sorted(set(have) - {e.id for e in entries})
        log.info("%s: %d files, %d unchanged, %d to embed%s", job.source, len(entries),
                 len(entries) - len(todo), len(todo),
                 f", {len(gone)} gone" + ("" if job.prune else " (kept: no --prune)")
                 if gone else "")
        embed_start = time.perf_counter()
        if job.ray is not None:
            from simclr_embed.service.index_ray import embed_on_ray

            indexed, skipped = embed_on_ray(job, settings, bundle, source, todo, writer)
        else:
            indexed, skipped = embed_here(job, settings, bundle, source, todo, writer)
        embed_s = time.perf_counter() - embed_start
        pruned = len(writer.delete(gone)) if job.prune and gone else 0
    finally:
        writer.close()
    return finish(job, source, settings, space, time.perf_counter() - started, embed_s,
                  {"files": listed, "unchanged": len(entries) - len(todo), "embedded": len(todo),
                   "indexed": indexed, "pruned": pruned}, skipped)


def embedding_session(bundle, settings: Settings) -> tuple[Any, str, int]:
    """(session, its input's name, the input side): the runtime a server with these settings
    would choose, for `index` and `duplicates`."""
    session, why = open_runtime(bundle.encoder_path(settings.precision), bundle.manifest,
                                settings.precision, settings.threads, settings.provider,
                                settings.data_dir / CHOICE_FILE)
    log.info("embedding on %s (%s)", session.get_providers()[0], why)
    return session, session.get_inputs()[0].name, int(bundle.manifest["input"]["size"])


def embed_here(job: IndexJob, settings: Settings, bundle, source: Source, todo: list[Entry],
               writer: GalleryWriter) -> tuple[int, list[tuple[Entry, str]]]:
    """Decode on a thread pool, embed and write here; (items written, entries skipped)."""
    session, name, size = embedding_session(bundle, settings)
    indexed, skipped = 0, []
    stream = read_files(source, todo, settings.max_body_bytes)
    with tqdm(total=len(todo), unit="img", desc="index", smoothing=0.05) as bar:
        for d in decoded_batches(stream, size, settings, job.decode_threads):
            for e, reason in d.skipped:
                log.warning("skipped %s: %s", e.id, reason)
            skipped += d.skipped
            if d.entries:
                emb, _ = session.run(None, {name: d.pixels})
                writer.add(*add_args(d, emb, source.origin))
                indexed += len(d.entries)
            bar.update(len(d.entries) + len(d.skipped))
            bar.set_postfix(skipped=len(skipped), refresh=False)
    return indexed, skipped


def finish(job: IndexJob, source: Source, settings: Settings, space: Space, seconds: float,
           embed_s: float, counts: dict[str, int], skipped: list[tuple[Entry, str]]
           ) -> dict[str, Any]:
    """The report (images/s: over the read-decode-embed-write pipeline, its start included,
    the listing and the bundle's check before it not)."""
    rejected = [{"id": i, "reason": r} for i, r in source.rejected]
    report = {"source": str(job.source), "origin": source.origin, "model": space.model_id,
              "precision": space.precision,
              "target": "postgresql" if settings.gallery_url else str(settings.data_dir),
              "runner": "here" if job.ray is None else f"ray {job.ray}",
              **counts, "skipped": len(skipped) + len(rejected), "seconds": round(seconds, 2),
              "embed_seconds": round(embed_s, 2),
              "images_per_s": round(counts["embedded"] / embed_s, 1) if embed_s else None,
              "skipped_files": [{"id": e.id, "reason": r} for e, r in skipped] + rejected}
    for item in rejected:
        log.warning("skipped %s: %s", item["id"], item["reason"])
    if job.report is not None:
        job.report.parent.mkdir(parents=True, exist_ok=True)
        job.report.write_text(json.dumps(report, indent=2) + "\n")
    log.info("indexed %d, unchanged %d, skipped %d, pruned %d in %.1f s%s", counts["indexed"],
             counts["unchanged"], report["skipped"], counts["pruned"], seconds,
             f" (report: {job.report})" if job.report else "")
    if counts["embedded"] and not counts["indexed"] and not counts["unchanged"]:
        raise IndexingError(f"none of the {counts['embedded']} files could be indexed (reasons "
                            f"in {job.report or 'the log'})")
    if not source.entries and not source.rejected:
        raise IndexingError(f"{job.source} holds no files")
    return report
