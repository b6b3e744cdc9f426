"""Operations: probes, metrics and what model is served."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from simclr_embed.service import schemas
from simclr_embed.service.deps import EngineDep, SettingsDep, check_ready
from simclr_embed.service.duplicates import calibrated_threshold
from simclr_embed.service.errors import Conflict, NotReady, StorageError
from simclr_embed.service.policy import policy

router = APIRouter()


@router.get("/healthz", tags=["ops"], responses=schemas.ERRORS)
@policy("open")
async def healthz(request: Request) -> dict:
    """Alive unless a model can no longer run (it failed CRASH_LIMIT times within
    CRASH_WINDOW_S, service/engine.py): then 503, so that a liveness probe restarts the
    process. Loading and storage are /readyz's."""
    dead = [e.model_id for e in request.app.state.models.engines if e.failed]
    if dead:
        raise NotReady(f"model {', '.join(dead)} can no longer run (it failed repeatedly; see "
                       "the server's log): restart the server")
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses=schemas.ERRORS)
@policy("open")
async def readyz(request: Request) -> dict:
    """Ready: every model loaded and warmed, and each gallery's store reachable."""
    models = request.app.state.models
    check_ready(models.get(None))  # 503 while the models load
    engines = models.engines
    for engine in engines:
        check_ready(engine)
        if not await asyncio.to_thread(engine.gallery.healthy):
            raise StorageError(f"the gallery database of {engine.model_id} is unreachable",
                               headers={"Retry-After": "2"})
    return {"status": "ready", "model": engines[0].model_id,
            "models": [e.model_id for e in engines]}


@router.post("/v1/models/reload", tags=["model"], responses=schemas.ERRORS)
@policy("write")
async def reload(request: Request) -> dict:
    """What SIGHUP does, with the API key: each bundle that changed on disk is loaded beside
    the serving one, verified, warmed and swapped in; a bundle that fails is refused (409)
    and the old model keeps serving (service/models.py)."""
    outcomes = await request.app.state.models.reload()
    refused = [o for o in outcomes if o["outcome"] == "refused"]
    if refused:
        raise Conflict("; ".join(f"{o['bundle']}: {o['error']}" for o in refused)
                       + f" (refused; {', '.join(o['model'] for o in refused)} keeps serving)")
    return {"models": outcomes}


@router.get("/metrics", tags=["ops"], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
@policy("any")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", tags=["model"], responses=schemas.ERRORS)
@policy("any")
async def model_info(engine: EngineDep, settings: SettingsDep) -> dict:
    m = engine.bundle.manifest
    ckpt = m["checkpoint"]
    scores = {k: v for k, v in ckpt.get("eval", {}).items() if isinstance(v, int | float)}
    # No file paths and no training history: this route answers anyone who can reach it.
    return {"model": engine.model_id, "precision": settings.precision,
            "provider": engine.model.provider,
            "provider_reason": engine.model.runtime_reason, "classes": m["classes"],
            "embedding_dim": engine.dim, "input": m["input"], "created": m["created"],
            "metrics": m["metrics"], "gallery_size": await engine.gallery_size(),
            "gallery_index": engine.gallery.kind,
            "gallery_recall": engine.gallery.recall_info(),
            "near_duplicate_threshold": calibrated_threshold(m, settings.precision),
            "checkpoint": {"epoch": ckpt.get("epoch"), "eval": scores}}
