"""One model as the routes see it: its encoder (service/model.py), its micro-batcher
(service/batcher.py) and its gallery (a GalleryStore), behind a narrow API: `infer`, `admit`,
`search`, `thumbnail`, `gallery_size`, the decode pool, and `users` (the lease a swap drains on,
service/models.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from simclr_embed.service import tracing
from simclr_embed.service.batcher import Batcher
from simclr_embed.service.bundle import Bundle
from simclr_embed.service.gallery import Gallery, gallery_path
from simclr_embed.service.gallery_map import GalleryMap
from simclr_embed.service.metrics import Metrics, ModelMetrics
from simclr_embed.service.model import Model
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES
from simclr_embed.service.store import Filter, GalleryStore, Neighbor, Space

log = logging.getLogger(__name__)


def open_gallery(settings: Settings, space: Space) -> GalleryStore:
    """PostgreSQL + pgvector when SIMCLR_EMBED_GALLERY_URL is set, else SQLite + FAISS."""
    if settings.gallery_url is not None:
        from simclr_embed.service.pg_gallery import PgGallery

        return PgGallery(space, settings.gallery_url.get_secret_value(), settings.hnsw_m,
                         settings.hnsw_ef_search)
    old = settings.data_dir / "gallery-journal.jsonl"
    if old.exists():
        log.warning("%s is the old JSON-lines journal and is no longer read: re-add its items "
                    "through the API, then remove it", old)
    return Gallery(space, gallery_path(settings.data_dir, space), settings.index,
                   settings.hnsw_m, settings.hnsw_ef_search, settings.accept_gallery_loss,
                   settings.faiss_threads, settings.recall_target)


class Engine:
    """`previous`: the engine this one is to replace (service/models.py), whose gallery it
    shares when both serve the same model."""

    def __init__(self, settings: Settings, metrics: Metrics,
                 in_flight: Callable[[], int] = lambda: 0,
                 bundle_dir: Path | None = None, previous: Engine | None = None) -> None:
        self.settings = settings
        self._server_metrics = metrics
        self.metrics: Metrics | ModelMetrics = metrics  # bound to the model once it is known
        self.bundle_dir = bundle_dir or settings.bundle
        self.batcher = Batcher(settings, metrics, in_flight)
        self.users = 0  # requests holding this engine (service/models.py drains on it)
        self.owns_gallery = True  # closes it at stop; a swap hands a shared one over
        self._previous = previous
        self._stopped = False
        self._model: Model | None = None  # load() makes them: see .model, .gallery
        self._gallery: GalleryStore | None = None
        self._map: GalleryMap | None = None
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="dec")
        self.decode_slots = asyncio.Semaphore(settings.decode_threads)
        self.size = 0  # the model's input side, which decoding resizes to: set by load()

    @property
    def model(self) -> Model:
        if self._model is None:
            raise RuntimeError("the engine is used before load()")
        return self._model

    @property
    def gallery(self) -> GalleryStore:
        if self._gallery is None:
            raise RuntimeError("the engine is used before load()")
        return self._gallery

    @property
    def gallery_map(self) -> GalleryMap:
        if self._map is None:
            raise RuntimeError("the engine is used before load()")
        return self._map

    # What the routes read about the model.
    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def bundle(self) -> Bundle:
        return self.model.bundle

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def pca(self) -> np.ndarray | None:
        return self.model.pca

    @property
    def ready(self) -> bool:
        return self.batcher.ready

    @property
    def failed(self) -> bool:
        return self.batcher.failed

    @property
    def pending(self) -> int:
        return self.batcher.pending

    # --- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Blocking: verify the bundle, open the session and warm it up while the gallery loads
        beside it (its SQLite check and index snapshot are I/O and C code: ~1 s of a 200k
        gallery's start that the model's ~0.5 s no longer adds to)."""
        self._model = model = Model(self.bundle_dir, self.settings)
        self.size = model.size
        self.metrics = bound = self._server_metrics.bind(model.id)
        with ThreadPoolExecutor(1, thread_name_prefix="gallery-load") as pool:
            gallery = pool.submit(self._load_gallery)
            model.open()
            gallery.result()
        self._previous = None  # not kept alive by its successor
        self._thumbs = model.bundle.thumbnails()
        self.metrics.set_model(*model.labels)
        self.batcher.bind(model.run, model.id, model.span_attributes, bound)
        self.metrics.gallery_size.set(len(self.gallery))
        log.info("engine ready: %s %s on %s (%s), gallery %d", model.id,
                 self.settings.precision, model.provider, model.runtime_reason,
                 len(self.gallery))

    def _load_gallery(self) -> None:
        s, model = self.settings, self.model
        if self._previous is not None and self._previous.model_id == model.id:
            self._gallery, self.owns_gallery = self._previous.gallery, False
            self._map = self._previous.gallery_map
            ids = model.bundle.gallery_ids()  # the vectors are in the shared gallery already
        else:
            space = Space(model.id, s.precision, model.dim)
            self._gallery = open_gallery(s, space)
            ids, labels, emb = model.bundle.gallery(s.precision)
            classes = model.bundle.classes
            self._gallery.load(ids.tolist(), [classes[y] for y in labels.tolist()], emb)
            db = gallery_path(s.data_dir, space)  # the map lies beside the index snapshot
            self._map = GalleryMap(self._gallery, db.with_name(db.stem + ".map.npz"))
        self.bundle_rows = {i: n for n, i in enumerate(ids.tolist())}

    def thumbnail(self, id_: str) -> np.ndarray | bytes | None:
        """An item's thumbnail: the PNG stored with an added image, else the bundle's pixels
        for a bundle item that still exists; None when there is none."""
        stored = self.gallery.thumbnail(id_)
        if stored is not None:
            return stored
        row = self.bundle_rows.get(id_)
        if row is None or self._thumbs is None or self.gallery.get(id_) is None:
            return None
        return np.asarray(self._thumbs[row])

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.load)
        self.batcher.start()

    async def stop(self) -> None:
        """Idempotent: a server stopping while a swap drains stops the old engine too."""
        if self._stopped:
            return
        self._stopped = True
        self.batcher.stop()
        # Off the event loop: joining the model thread, the index snapshot and the WAL
        # checkpoint of a 200k gallery took 5 s, and every other request waited for them.
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        self.batcher.close()
        self.decode_pool.shutdown(wait=False)
        if self._gallery is not None and self.owns_gallery:
            self.gallery.close()

    async def gallery_size(self) -> int:
        """In a thread: PostgreSQL's is a count(*) over the network."""
        return await asyncio.to_thread(len, self.gallery)

    # --- inference and search --------------------------------------------------------------
    def admit(self, n: int) -> None:
        self.batcher.admit(n)

    async def infer(self, images: np.ndarray, until: float | None = None,
                    gone: Callable[[], Awaitable[object]] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The batcher's infer (service/batcher.py)."""
        return await self.batcher.infer(images, until, gone)

    async def search(self, queries: np.ndarray, k: int, f: Filter | None
                     ) -> list[list[Neighbor]]:
        """The gallery's search: on the event loop when this is the only request in flight and
        the gallery is in memory, else in a thread beside the others. The hop to a thread and
        back costs 0.14-0.21 ms against a 0.38-0.46 ms HNSW search at 200k
        (benchmarks/archive/search_hop.py)."""
        with tracing.span("search", {"search.k": k, "search.index": self.gallery.kind,
                                     "search.filtered": f is not None}):
            if CASES.lone_run and self.gallery.in_memory and self.batcher.in_flight() <= 1:
                await asyncio.sleep(0)  # requests already read off the sockets go first
                if self.batcher.in_flight() <= 1:
                    return self.gallery.search(queries, k, f)
            return await asyncio.to_thread(self.gallery.search, queries, k, f)
