"""Every Prometheus metric of the service: one registry per app, prefix simclr_embed_,
explicit buckets. Under several uvicorn workers, prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by `simclr-embed serve --workers N`) sums every worker's values,
so /metrics is whole whichever worker answers."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

PREFIX = "simclr_embed_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(PREFIX + "requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram(PREFIX + "request_latency_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        # The engine's own metrics carry the model they are about (service/models.py).
        self.batch_size = Histogram(PREFIX + "batch_size", "images per model batch",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(PREFIX + "queue_wait_seconds", "time from enqueue to batch",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram(PREFIX + "inference_seconds", "model time per batch",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_images = Gauge(PREFIX + "queue_images", "images waiting for the model",
                                  ["model"], registry=r, multiprocess_mode="livesum")
        self.decoding = Gauge(PREFIX + "decode_images", "images decoding in the pool or waiting "
                              "for a decode slot", registry=r, multiprocess_mode="livesum")
        self.body_bytes = Gauge(PREFIX + "body_bytes", "request body bytes held, by requests "
                                "being received or served", registry=r,
                                multiprocess_mode="livesum")
        self.lone_runs = Counter(PREFIX + "lone_runs", "single-image requests run on the event "
                                 "loop, no other request in flight", ["model"], registry=r)
        self.rejected = Counter(PREFIX + "rejected_overload", "requests refused with 503",
                                registry=r)
        self.client_gone = Counter(PREFIX + "client_gone", "requests dropped because the "
                                   "client had closed the connection", registry=r)
        self.model_crashes = Counter(PREFIX + "model_loop_crashes", "times the batch loop "
                                     "died of an unexpected error and was restarted",
                                     ["model"], registry=r)
        self.deadline_dropped = Counter(PREFIX + "deadline_dropped", "requests dropped unrun "
                                        "because their X-Request-Timeout had passed, by the "
                                        "work saved (decode, model)", ["stage"], registry=r)
        for stage in ("decode", "model"):  # service/deadline.py
            self.deadline_dropped.labels(stage)
        self.decode_seconds = Histogram(PREFIX + "decode_seconds", "time to decode and resize "
                                        "one request's images", buckets=LATENCY_BUCKETS,
                                        registry=r)
        self.storage_errors = Counter(PREFIX + "storage_errors", "gallery writes refused by "
                                      "the store (disk full, I/O error)", ["kind"], registry=r)
        # Set by the worker that made the last change, after it: the most recent value is
        # right for every worker ("max" kept a size from before a delete).
        self.gallery_size = Gauge(PREFIX + "gallery_size", "vectors in the search index",
                                  ["model"], registry=r, multiprocess_mode="mostrecent")
        self.swaps = Counter(PREFIX + "model_swaps", "bundles reloaded from disk, by outcome "
                             "(swapped, unchanged, refused)", ["outcome"], registry=r)
        self.model = Gauge(PREFIX + "model_info", "the loaded model (value 1)",
                           ["model_id", "precision", "provider", "bundle"], registry=r,
                           multiprocess_mode="max")

    def set_model(self, model_id: str, precision: str, provider: str, bundle: str) -> None:
        self.model.labels(model_id, precision, provider, bundle).set(1)

    def unset_model(self, model_id: str, precision: str, provider: str, bundle: str) -> None:
        self.model.labels(model_id, precision, provider, bundle).set(0)

    def bind(self, model_id: str) -> ModelMetrics:
        return ModelMetrics(self, model_id)

    def exposition(self) -> bytes:
        """The text /metrics serves: every worker's values in multiprocess mode."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)


class ModelMetrics:
    """One model's view of the metrics: the per-model ones labelled with its id, the rest the
    server's own."""

    PER_MODEL = ("batch_size", "queue_wait", "inference", "queue_images", "lone_runs",
                 "model_crashes", "gallery_size")

    def __init__(self, metrics: Metrics, model_id: str) -> None:
        self._metrics = metrics
        for name in self.PER_MODEL:
            setattr(self, name, getattr(metrics, name).labels(model_id))

    def __getattr__(self, name: str):
        return getattr(self._metrics, name)
