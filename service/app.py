"""FastAPI app: thin routes over the engine, one router module per resource (service/routes/).
`create_app(settings)` builds one; uvicorn runs `service.app:app_from_env` (factory) or
`simclr-embed serve`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from simclr_embed import configure_logging
from simclr_embed.service import openai_api, page, tracing
from simclr_embed.service.admission import Gate, Inflight
from simclr_embed.service.deps import NumpyJSON
from simclr_embed.service.engine import Engine
from simclr_embed.service.handlers import install_handlers
from simclr_embed.service.hot_path import HotPath
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.models import Models
from simclr_embed.service.policy import Policies
from simclr_embed.service.routes import gallery, inference, ops
from simclr_embed.service.schemas import with_setting_limits
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES
from simclr_embed.service.startup import check_before_workers

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    tracing.setup()  # by the OTEL_* variables, once per process
    metrics = Metrics()
    inflight = Inflight(gauge=metrics.body_bytes)
    models = Models(settings.bundle_dirs(), metrics,
                    settings.body_timeout_s + settings.model_timeout_s,
                    lambda d, previous: Engine(settings, metrics, lambda: inflight.requests, d,
                                               previous))

    sighup = Sighup()
    policies = Policies()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        policies.load(app.routes)  # again: a route added since create_app is checked too
        await models.start()
        sighup.serve(models)
        if CASES.settle_heap:
            settle_heap()
        yield
        await models.stop()

    # FastAPIOffline: /docs and /redoc serve their assets from a package, not a CDN.
    app = FastAPIOffline(title="simclr-embed", version="1", lifespan=lifespan,
                  default_response_class=NumpyJSON,
                  description="Image embeddings, nearest-neighbour search and classification "
                  "from SimCLR ResNet-18 bundles (INT8 or FP32) on ONNX Runtime or OpenVINO.")
    app.state.settings, app.state.metrics, app.state.models = settings, metrics, models

    def openapi() -> dict:
        if not models.engines:  # still loading: the limits that come from models wait
            return type(app).openapi(app)
        if app.openapi_schema is None:
            app.openapi_schema = with_setting_limits(
                type(app).openapi(app), settings.max_list_items, models.names, settings.max_k,
                min(len(e.bundle.classes) for e in models.engines),
                sorted(e.dim for e in models.engines))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_handlers(app)
    for module in (ops, inference, gallery, openai_api, page):
        app.include_router(module.router)
    policies.load(app.routes)  # UndeclaredPolicy: a route without one does not start
    if CASES.hot_path:  # added first: it runs inside the Gate
        app.add_middleware(HotPath, models=models, settings=settings)
    app.add_middleware(Gate, settings=settings, metrics=metrics, inflight=inflight,
                       queued_images=lambda: models.pending, policies=policies)
    if settings.api_key is None:
        log.info("no API key (SIMCLR_EMBED_API_KEY unset or empty): gallery changes and "
                 "POST /v1/models/reload are off")
    else:
        log.info("API key set: required for gallery changes, model reloads%s",
                 " and every route but /healthz, /readyz and /" if settings.require_api_key
                 else "")
        if settings.read_key is None and not settings.require_api_key:
            log.warning("gallery listings, vectors and thumbnails are open to anyone who "
                        "reaches the port: set SIMCLR_EMBED_READ_KEY to close them")
    return app


class Sighup:
    """SIGHUP reloads the bundles that changed on disk (service/models.py); under `serve
    --workers N` the supervisor sends it on to each worker (service/supervisor.py). One that
    comes while the models still load is kept and acted on once they have: SIGHUP's default
    action would end the process."""

    def __init__(self) -> None:
        self.seen = False
        with contextlib.suppress(ValueError):  # signals are set in the main thread only
            signal.signal(signal.SIGHUP, self._early)

    def _early(self, *_) -> None:
        self.seen = True

    def serve(self, models: Models) -> None:
        loop = asyncio.get_running_loop()

        def reload() -> None:
            log.info("SIGHUP: reloading the bundles that changed")
            task = loop.create_task(models.reload())
            task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or
                                   log.error("reload failed: %r", t.exception()))

        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, reload)
        if self.seen:
            reload()


GC_GEN0_THRESHOLD = 20_000  # CPython's default is 700 allocations


def settle_heap() -> None:
    """Once loaded, the modules, the app and the bundle stay alive for good: frozen, the garbage
    collector stops walking them again and again, and with a larger first generation it runs
    less often for the short-lived objects of each request (benchmarks/results/gc_settle.json:
    event-loop CPU per request and p99 at 32 clients both down; docs/benchmarks.md, "Serving")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def app_from_env() -> FastAPI:
    """The uvicorn factory, in every worker of `simclr-embed serve`; started by hand
    (`uvicorn --factory simclr_embed.service.app:app_from_env`) it first makes the checks that
    serve makes before its workers (service/startup.py: skipped where serve made them)."""
    # A worker of `serve --workers N` is a fresh process: without this its INFO lines (the
    # engine's start, swaps, drains) would be lost, and the rest would come unformatted.
    settings = Settings()
    configure_logging(settings.log_format == "json")
    check_before_workers(settings)
    return create_app(settings)
