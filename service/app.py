"""FastAPI app: thin routes over the engine. `create_app(settings)` builds one; uvicorn runs
`service.app:app_from_env` (factory) or `simclr-embed serve`."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service import openai_api, schemas
from service.admission import Gate
from service.deps import (
    AuthDep,
    EngineDep,
    NumpyJSON,
    SettingsDep,
    check_k,
    check_vectors,
    decode_all,
    read_body,
)
from service.engine import Engine
from service.errors import InvalidInput, NotFound
from service.handlers import install_handlers
from service.metrics import Metrics
from service.preprocess import decode_base64
from service.settings import Settings

log = logging.getLogger(__name__)


def softmax_top(logits: np.ndarray, classes: list[str], k: int) -> list[list[dict]]:
    z = logits - logits.max(1, keepdims=True)  # (n, C)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    top = np.argsort(-p, axis=1)[:, :k]
    return [[{"label": classes[c], "index": int(c), "probability": float(row[c])} for c in t]
            for row, t in zip(p, top, strict=True)]


# --- routes ----------------------------------------------------------------------------------
router = APIRouter()


@router.get("/healthz", tags=["ops"], responses=schemas.ERRORS)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses=schemas.ERRORS)
async def readyz(engine: EngineDep) -> dict:
    return {"status": "ready", "model": engine.model_id}


@router.get("/metrics", tags=["ops"], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", tags=["model"], responses=schemas.ERRORS)
async def model_info(engine: EngineDep, settings: SettingsDep) -> dict:
    m = engine.bundle.manifest
    ckpt = m["checkpoint"]
    scores = {k: v for k, v in ckpt.get("eval", {}).items() if isinstance(v, int | float)}
    # No file paths and no training history: this route answers anyone who can reach it.
    return {"model": engine.model_id, "precision": settings.precision,
            "provider": engine.session.get_providers()[0], "classes": m["classes"],
            "embedding_dim": engine.dim, "input": m["input"], "created": m["created"],
            "metrics": m["metrics"], "gallery_size": len(engine.gallery),
            "gallery_index": engine.gallery.kind,
            "checkpoint": {"epoch": ckpt.get("epoch"), "eval": scores}}


@router.post("/v1/embed", tags=["inference"], response_model=schemas.EmbedResponse,
             responses=schemas.ERRORS, openapi_extra=schemas.image_body(schemas.ImagesRequest))
async def embed(request: Request, engine: EngineDep, settings: SettingsDep) -> NumpyJSON:
    _, raws = await read_body(request, schemas.ImagesRequest)
    emb, _ = await engine.infer(await decode_all(request, engine, settings, raws))
    return NumpyJSON({"model": engine.model_id, "precision": settings.precision,
                      "dimension": engine.dim, "embeddings": emb})


@router.post("/v1/search", tags=["inference"], response_model=schemas.SearchResponse,
             responses=schemas.ERRORS, openapi_extra=schemas.image_body(schemas.SearchRequest))
async def search(request: Request, engine: EngineDep, settings: SettingsDep,
                 k: Annotated[int, Query(description="for multipart / image bodies")] = 10,
                 ) -> NumpyJSON:
    body, raws = await read_body(request, schemas.SearchRequest)
    if body is not None:
        k = body.k
        if (body.images is None) == (body.embeddings is None):
            raise InvalidInput("send exactly one of 'images' or 'embeddings'")
    check_k(k, settings.max_k)
    if body is not None and body.embeddings is not None:
        if len(body.embeddings) > settings.max_images_per_request:
            raise InvalidInput(f"at most {settings.max_images_per_request} query vectors")
        queries = check_vectors(body.embeddings, engine.dim)
    else:
        queries, _ = await engine.infer(await decode_all(request, engine, settings, raws))
    hits = await asyncio.to_thread(engine.gallery.search, queries, k)
    return NumpyJSON({"model": engine.model_id, "precision": settings.precision,
                           "results": [[h.__dict__ for h in row] for row in hits]})


@router.post("/v1/classify", tags=["inference"], response_model=schemas.ClassifyResponse,
             responses=schemas.ERRORS, openapi_extra=schemas.image_body(schemas.ClassifyRequest))
async def classify(request: Request, engine: EngineDep, settings: SettingsDep,
                   k: Annotated[int, Query(description="for multipart / image bodies")] = 5,
                   ) -> NumpyJSON:
    body, raws = await read_body(request, schemas.ClassifyRequest)
    k = check_k(body.k if body is not None else k, len(engine.bundle.classes))
    _, logits = await engine.infer(await decode_all(request, engine, settings, raws))
    return NumpyJSON({"model": engine.model_id, "precision": settings.precision,
                           "results": softmax_top(logits, engine.bundle.classes, k)})


@router.get("/v1/gallery", tags=["gallery"], responses=schemas.ERRORS)
async def gallery_list(engine: EngineDep, settings: SettingsDep,
                       after: Annotated[str | None, Query(description="last id of the previous "
                                                          "page")] = None,
                       limit: Annotated[int, Query(ge=1)] = 100) -> dict:
    """Items in id order, a page at a time: pass the returned `next` as `after`."""
    if limit > settings.max_list_items:
        raise InvalidInput(f"limit must be at most {settings.max_list_items}, got {limit}")
    page = await asyncio.to_thread(engine.gallery.listing, after, limit)
    size = await asyncio.to_thread(engine.gallery.size)
    return {"size": size, "index": engine.gallery.kind,
            "items": [{"id": i, "label": lab} for i, lab in page],
            "next": page[-1][0] if len(page) == limit else None}


@router.get("/v1/gallery/{item_id:path}", tags=["gallery"], responses=schemas.ERRORS)
async def gallery_get(item_id: str, engine: EngineDep) -> NumpyJSON:
    """One item; ids may contain '/' (bundle items are '<class>/<n>')."""
    found = await asyncio.to_thread(engine.gallery.get, item_id)
    if found is None:
        raise NotFound(f"no gallery item with id {item_id!r}")
    return NumpyJSON({"id": item_id, "label": found[0], "embedding": found[1]})


@router.post("/v1/gallery", tags=["gallery"], responses=schemas.ERRORS)
async def gallery_add(request: Request, body: schemas.GalleryAddRequest, engine: EngineDep,
                      settings: SettingsDep, _: AuthDep) -> dict:
    items = body.items
    if len(items) > settings.max_images_per_request:
        raise InvalidInput(f"at most {settings.max_images_per_request} items per request")
    if len({i.id for i in items}) != len(items):
        raise InvalidInput("item ids must be unique within a request")
    if any((i.image is None) == (i.embedding is None) for i in items):
        raise InvalidInput("each item needs exactly one of 'image' or 'embedding'")
    if any(len(i.label or "") > settings.max_label_chars for i in items):
        raise InvalidInput(f"labels are at most {settings.max_label_chars} characters")
    emb = np.zeros((len(items), engine.dim), np.float32)
    with_image = [n for n, i in enumerate(items) if i.image is not None]
    if with_image:
        raws = [decode_base64(items[n].image) for n in with_image]
        emb[with_image], _ = await engine.infer(
            await decode_all(request, engine, settings, raws))
    with_vec = [n for n, i in enumerate(items) if i.embedding is not None]
    if with_vec:
        emb[with_vec] = check_vectors([items[n].embedding for n in with_vec], engine.dim)
    await asyncio.to_thread(engine.gallery.add, [i.id for i in items],
                            [i.label for i in items], emb)
    size = await asyncio.to_thread(engine.gallery.size)
    engine.metrics.gallery_size.set(size)
    return {"added": [i.id for i in items], "size": size}


async def delete_ids(engine: Engine, ids: list[str]) -> tuple[list[str], int]:
    deleted = await asyncio.to_thread(engine.gallery.delete, ids)
    size = await asyncio.to_thread(engine.gallery.size)
    engine.metrics.gallery_size.set(size)
    return deleted, size


@router.delete("/v1/gallery/{item_id:path}", tags=["gallery"], responses=schemas.ERRORS)
async def gallery_delete(item_id: str, engine: EngineDep, _: AuthDep) -> dict:
    deleted, size = await delete_ids(engine, [item_id])
    if not deleted:
        raise NotFound(f"no gallery item with id {item_id!r}")
    return {"deleted": item_id, "size": size}


@router.post("/v1/gallery/delete", tags=["gallery"], responses=schemas.ERRORS)
async def gallery_bulk_delete(body: schemas.GalleryDeleteRequest, engine: EngineDep,
                              settings: SettingsDep, _: AuthDep) -> dict:
    """Several ids at once; those that do not exist are listed as missing, not an error."""
    if len(body.ids) > settings.max_list_items:
        raise InvalidInput(f"at most {settings.max_list_items} ids per request")
    deleted, size = await delete_ids(engine, list(dict.fromkeys(body.ids)))
    return {"deleted": deleted, "missing": [i for i in body.ids if i not in set(deleted)],
            "size": size}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    engine = Engine(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="simclr-embed", version="1", lifespan=lifespan,
                  default_response_class=NumpyJSON,
                  description="Image embeddings, nearest-neighbour search and classification "
                  "from a SimCLR ResNet-18 on ONNX Runtime (INT8 or FP32).")
    app.state.settings, app.state.metrics, app.state.engine = settings, metrics, engine
    install_handlers(app)
    app.include_router(router)
    app.include_router(openai_api.router)
    app.add_middleware(Gate, settings=settings, metrics=metrics,
                       queued_images=lambda: engine.pending)
    if settings.api_key is None:
        log.info("no API key (SIMCLR_EMBED_API_KEY unset or empty): gallery management is off")
    else:
        log.info("API key set: required for gallery changes%s",
                 " and every route but /healthz and /readyz" if settings.require_api_key else "")
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: `uvicorn --factory service.app:app_from_env`."""
    return create_app(Settings())
