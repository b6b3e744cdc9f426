"""`simclr-embed index --ray local|ADDRESS`: the indexer's read -> decode -> embed -> write as a Ray
Data job, for collections one machine embeds too slowly.

from_items(the files to embed) -> map_batches(read + decode: tasks, the service's decoder) ->
map_batches(Embedder: an actor pool, one runtime session each) -> the driver writes each batch to
the target, one commit per batch as a local run does (so a killed job resumes the same way).
Workers read the files by path and get the model through the object store: the files must be
where every node can read them (a shared filesystem); the bundle need only be on the driver.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import cast

import numpy as np
from tqdm import tqdm

from simclr_embed.service.bundle import Bundle
from simclr_embed.service.indexer import (
    BATCH,
    Decoded,
    Entry,
    IndexingError,
    IndexJob,
    Source,
    add_args,
    decode_chunk,
    read_files,
)
from simclr_embed.service.runtime import CHOICE_FILE, make_session, open_runtime, provider_name
from simclr_embed.service.settings import Settings
from simclr_embed.service.store import GalleryWriter

log = logging.getLogger(__name__)


def decode_rows(batch: dict[str, np.ndarray], size: int, settings: Settings
                ) -> dict[str, np.ndarray]:
    """Read and decode one batch of files on a Ray worker; failures keep their row and say why."""
    entries = [Entry(str(n), None, "", str(p), int(s))
               for n, p, s in zip(batch["n"], batch["path"], batch["size"], strict=True)]
    d = decode_chunk(list(read_files(Source("", entries), entries, settings.max_body_bytes)),
                     size, settings)
    ok = {e.id: k for k, e in enumerate(d.entries)}
    pixels = np.zeros((len(entries), size, size, 3), np.uint8)
    thumbs, reasons = [b""] * len(entries), dict((e.id, r) for e, r in d.skipped)
    for row, e in enumerate(entries):
        if e.id in ok:
            pixels[row], thumbs[row] = d.pixels[ok[e.id]], d.thumbs[ok[e.id]]
    return {"n": batch["n"], "ok": np.array([e.id in ok for e in entries]),
            "reason": np.array([reasons.get(e.id, "") for e in entries], dtype=object),
            "thumb": np.array(thumbs, dtype=object), "pixels": pixels}


class Embedder:
    """One runtime session per actor, made from the encoder's bytes (no shared filesystem
    needed for the bundle)."""

    def __init__(self, model: bytes, settings: Settings) -> None:
        fd, path = tempfile.mkstemp(suffix=".onnx")
        with os.fdopen(fd, "wb") as f:
            f.write(model)
        self.session = make_session(path, settings.threads, settings.provider)
        self.name = self.session.get_inputs()[0].name
        os.unlink(path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb, _ = self.session.run(None, {self.name: batch.pop("pixels")})
        batch["embedding"] = np.asarray(emb)
        return batch


def embed_on_ray(job: IndexJob, settings: Settings, bundle: Bundle, source: Source,
                 todo: list[Entry], writer: GalleryWriter
                 ) -> tuple[int, list[tuple[Entry, str]]]:
    try:
        import ray
    except ImportError:
        raise IndexingError("--ray needs Ray Data: pip install 'simclr-embed[index]'") from None
    if source.archive is not None:
        raise IndexingError("--ray reads files by path: extract the archive, or list its files "
                            "in a manifest")
    if not todo:
        return 0, []
    local = job.ray == "local" and not ray.is_initialized()
    ray.init(address=None if job.ray == "local" else job.ray, ignore_reinit_error=True,
             log_to_driver=False,
             **({"num_cpus": os.cpu_count(), "include_dashboard": False} if local else {}))
    try:
        return _run(job, settings, bundle, source, todo, writer)
    finally:
        if local:  # the instance this job started ends with it
            ray.shutdown()


def _run(job: IndexJob, settings: Settings, bundle: Bundle, source: Source, todo: list[Entry],
         writer: GalleryWriter) -> tuple[int, list[tuple[Entry, str]]]:
    import ray

    size = int(bundle.manifest["input"]["size"])
    path = bundle.encoder_path(settings.precision)
    model = path.read_bytes()
    # The driver's choice for every actor: one gallery, one runtime's vectors.
    session, why = open_runtime(path, bundle.manifest, settings.precision, settings.threads,
                                settings.provider, settings.data_dir / CHOICE_FILE)
    log.info("actors embed on %s (%s)", provider_name(session), why)
    settings = settings.model_copy(update={"provider": provider_name(session)})
    del session
    ds = ray.data.from_items([{"n": n, "path": e.path, "size": e.size}
                              for n, e in enumerate(todo)])
    # batch_format="numpy": each batch is a dict of arrays (Ray annotates every format's union).
    ds = ds.map_batches(decode_rows, fn_kwargs=  # pyright: ignore[reportArgumentType]
                        {"size": size, "settings": settings},
                        batch_size=BATCH, batch_format="numpy")
    ds = ds.map_batches(Embedder, fn_constructor_args=(model, settings),
                        concurrency=job.actors, num_cpus=1, batch_size=BATCH,
                        batch_format="numpy")
    indexed, skipped = 0, []
    with tqdm(total=len(todo), unit="img", desc="index (ray)", smoothing=0.05) as bar:
        for batch in ds.iter_batches(batch_size=BATCH, batch_format="numpy"):
            b = cast("dict[str, np.ndarray]", batch)
            rows = [int(n) for n in b["n"]]
            good = [k for k, ok in enumerate(b["ok"]) if ok]
            skipped += [(todo[rows[k]], str(b["reason"][k])) for k in range(len(rows))
                        if not b["ok"][k]]
            if good:
                d = Decoded([todo[rows[k]] for k in good], np.zeros(0),
                            [bytes(b["thumb"][k]) for k in good], [])
                writer.add(*add_args(d, np.asarray(b["embedding"][good], np.float32),
                                     source.origin))
                indexed += len(good)
            bar.update(len(rows))
    for e, reason in skipped:
        log.warning("skipped %s: %s", e.id, reason)
    return indexed, skipped
