"""One model's encoder: the verified bundle, the runtime session the host runs it fastest on,
and its warm-up. What the batcher (service/batcher.py) runs, and what the routes read about
the model (its id, dimension, input size, PCA rotation); no queue and no gallery here."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from simclr_embed.service.bundle import Bundle, BundleError, load_bundle, model_id
from simclr_embed.service.runtime import CHOICE_FILE, open_runtime
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES

log = logging.getLogger(__name__)


class Model:
    """Blocking to build: reads and verifies the bundle; `open()` then opens and warms the
    session (the engine loads the gallery meanwhile)."""

    def __init__(self, bundle_dir: Path, settings: Settings) -> None:
        self.bundle_dir, self.settings = bundle_dir, settings
        self.bundle: Bundle = load_bundle(bundle_dir)
        manifest = self.bundle.manifest
        self.id = model_id(manifest)
        self.dim = int(manifest["embedding_dim"])
        self.size = int(manifest["input"]["size"])
        self.pca = self.bundle.pca()  # for `dimensions`; None in older bundles

    def open(self) -> None:
        s = self.settings
        self.session, self.runtime_reason = open_runtime(
            self.bundle.encoder_path(s.precision), self.bundle.manifest, s.precision,
            s.threads, s.provider, s.data_dir / CHOICE_FILE, spinning=CASES.spinning)
        self.input_name = self.session.get_inputs()[0].name
        for batch in (1, s.max_batch_size):  # first runs allocate and pick kernels
            self._check_output(batch, *self.run(
                np.zeros((batch, self.size, self.size, 3), np.uint8)))
        self.provider = self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, S, S, 3) uint8 -> (embeddings (n, D), logits (n, C))."""
        emb, logits = self.session.run(None, {self.input_name: batch})
        return emb, logits

    @property
    def labels(self) -> tuple[str, str, str, str]:
        """Its model_info labels: the bundle by its name, not its path on the server."""
        return self.id, self.settings.precision, self.provider, self.bundle_dir.name

    @property
    def span_attributes(self) -> dict[str, str]:
        return {"model.id": self.id, "model.precision": self.settings.precision,
                "model.runtime": self.provider}

    def _check_output(self, batch: int, emb: np.ndarray, logits: np.ndarray) -> None:
        """A bundle whose graph does not give what its manifest says is refused at load."""
        want = ((batch, self.dim), (batch, len(self.bundle.classes)))
        if (emb.shape, logits.shape) != want or not np.isfinite(emb).all():
            raise BundleError(f"{self.bundle_dir}: the encoder gives {emb.shape} embeddings and "
                              f"{logits.shape} logits for {batch} images, not {want}")
