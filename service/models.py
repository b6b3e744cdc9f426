"""The models one server serves: an Engine per bundle, chosen per request by `model` (the
OpenAI field, a query parameter on the native routes; default the first), and swapped without
downtime when a bundle changes on disk (SIGHUP, or POST /v1/models/reload with the API key).

A swap loads and verifies the new bundle beside the old one (file digests, the graph's output
shapes, a warm-up at batch 1 and the largest batch), then replaces the old engine in one
assignment: requests that already hold the old one finish on it, new ones get the new one,
and the old one stops once no request holds it. A bundle that fails any check is refused and
the old one keeps serving. With the same weights (model id) the new engine keeps the old one's
gallery object; with new weights it opens the new model's own gallery (service/gallery.py,
gallery_path), since vectors of one model mean nothing to another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from simclr_embed.errors import ConfigError
from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import NotFound, NotReady
from simclr_embed.service.metrics import Metrics

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.05


class Models:
    def __init__(self, dirs: list[Path], metrics: Metrics, drain_s: float,
                 make: Callable[[Path, Engine | None], Engine]) -> None:
        self.dirs, self.metrics, self.drain_s, self.make = dirs, metrics, drain_s, make
        self.engines: list[Engine] = []
        self._reload_lock = asyncio.Lock()
        self._draining: dict[asyncio.Task, Engine] = {}

    # --- choosing ----------------------------------------------------------------------------
    @property
    def default(self) -> Engine:
        return self.engines[0]

    @property
    def names(self) -> list[str]:
        """What `model` may be: each model's id and its bundle's directory name."""
        return [n for e in self.engines for n in (e.model_id, e.bundle_dir.name)]

    def get(self, name: str | None) -> Engine:
        if not self.engines:
            raise NotReady("the models are still loading", headers={"Retry-After": "2"})
        if name is None:
            return self.engines[0]
        for e in self.engines:
            if name in (e.model_id, e.bundle_dir.name):
                return e
        raise NotFound(f"model {name!r} is not served here; GET /v1/models lists "
                       f"{', '.join(repr(e.model_id) for e in self.engines)}", param="model")

    @property
    def pending(self) -> int:
        return sum(e.pending for e in self.engines)

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """One after another: the first model takes the data directory's gallery (and the
        loading threads are not shared by several models at once)."""
        for d in self.dirs:
            engine = self.make(d, None)
            await engine.start()
            self.engines.append(engine)
        for what, values in (("model id", [e.model_id for e in self.engines]),
                             ("bundle directory name", [d.name for d in self.dirs])):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ConfigError(f"two bundles share the {what} {twice[0]!r}: serve each "
                                 "model once, from directories with distinct names")

    async def stop(self) -> None:
        """Every engine, those still draining after a swap too (their galleries close)."""
        for task in list(self._draining):
            task.cancel()
        for e in [*self._draining.values(), *self.engines]:
            await e.stop()

    # --- swaps -------------------------------------------------------------------------------
    async def reload(self) -> list[dict]:
        """Each bundle whose manifest changed on disk is loaded, checked and swapped in; one
        outcome per model: swapped, unchanged or refused (with the reason)."""
        async with self._reload_lock:
            return [await self._reload(n) for n in range(len(self.engines))]

    async def _reload(self, n: int) -> dict:
        old = self.engines[n]
        out = {"bundle": old.bundle_dir.name, "previous": old.model_id}
        if _manifest(old.bundle_dir) == old.bundle.manifest:
            self.metrics.swaps.labels("unchanged").inc()
            return {**out, "model": old.model_id, "outcome": "unchanged"}
        start = time.perf_counter()
        new = self.make(old.bundle_dir, old)
        try:
            await new.start()
            if new.model_id in [e.model_id for i, e in enumerate(self.engines) if i != n]:
                raise ConfigError(f"model {new.model_id} is already served from another bundle")
        except Exception as e:
            await new.stop()
            log.error("reload of %s refused, %s keeps serving: %s", old.bundle_dir,
                      old.model_id, e)
            self.metrics.swaps.labels("refused").inc()
            return {**out, "model": old.model_id, "outcome": "refused", "error": str(e)}
        self.engines[n] = new  # the swap: requests from here on get the new engine
        if new.gallery is old.gallery:
            old.owns_gallery, new.owns_gallery = False, True
        self.metrics.unset_model(*old.model.labels)
        self.metrics.swaps.labels("swapped").inc()
        log.info("swapped %s -> %s from %s in %.2f s; draining the old one", old.model_id,
                 new.model_id, old.bundle_dir, time.perf_counter() - start)
        task = asyncio.create_task(self._drain(old))
        self._draining[task] = old
        task.add_done_callback(lambda t: self._draining.pop(t, None))
        return {**out, "model": new.model_id, "outcome": "swapped"}

    async def _drain(self, old: Engine) -> None:
        """Stops the old engine once no request holds it (or after drain_s, the longest a
        request can take to be read and answered)."""
        deadline = time.monotonic() + self.drain_s
        while old.users and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if old.users:
            log.warning("%d requests still hold %s after %g s; stopping it", old.users,
                        old.model_id, self.drain_s)
        await old.stop()
        log.info("%s drained and stopped", old.model_id)


def _manifest(bundle_dir: Path) -> dict | None:
    try:
        return json.loads((bundle_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None  # mid-copy: the reload's own load names what is wrong
