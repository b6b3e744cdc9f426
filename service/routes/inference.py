"""Inference: embed, search and classify images (or search by vectors)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from simclr_embed.service import encodings, schemas
from simclr_embed.service.bodies import read_body
from simclr_embed.service.checks import check_k, check_vectors, query_int
from simclr_embed.service.deps import EngineDep, NumpyJSON, SettingsDep
from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import InvalidInput
from simclr_embed.service.pipeline import decode_all, infer
from simclr_embed.service.policy import policy
from simclr_embed.service.settings import Settings
from simclr_embed.service.store import Filter

router = APIRouter()


def softmax_top(logits: np.ndarray, classes: list[str], k: int) -> list[list[dict]]:
    z = logits - logits.max(1, keepdims=True)  # (n, C)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    top = np.argsort(-p, axis=1)[:, :k]
    return [[{"label": classes[c], "index": int(c), "probability": float(row[c])} for c in t]
            for row, t in zip(p, top, strict=True)]


async def embed_response(request: Request, engine: Engine, settings: Settings) -> NumpyJSON:
    """The body of /v1/embed, shared by the route and the hot path (service/hot_path.py)."""
    fmt, dims = encodings.from_query(request.query_params, engine.dim, engine.pca)
    _, raws, names = await read_body(request, schemas.ImagesRequest)
    emb, _ = await infer(request, engine, await decode_all(request, engine, settings, raws,
                                                          names))
    vectors, scales = encodings.output(emb, engine.pca, dims, fmt)
    out = {"model": engine.model_id, "precision": settings.precision,
           "dimension": dims or engine.dim, "encoding_format": fmt, "embeddings": vectors}
    if scales is not None:
        out["scales"] = scales
    return NumpyJSON(out)


@router.post("/v1/embed", tags=["inference"], response_model=schemas.EmbedResponse,
             responses=schemas.ERRORS, openapi_extra=schemas.image_body(schemas.ImagesRequest))
@policy("any", fast=embed_response)
async def embed(request: Request, engine: EngineDep, settings: SettingsDep,
                encoding_format: Annotated[encodings.Format, Query(
                    description="float, or base64 of float32 / float16 / int8 (with per-vector"
                    " scales) / binary / ubinary (sign bits)")] = "float",
                dimensions: Annotated[int | None, Query(
                    ge=1, description="the first principal components (the bundle's PCA), "
                    "re-normalized")] = None) -> NumpyJSON:
    return await embed_response(request, engine, settings)


async def search_response(request: Request, engine: Engine, settings: Settings) -> NumpyJSON:
    """The body of /v1/search, shared by the route and the hot path (service/hot_path.py)."""
    body, raws, names = await read_body(request, schemas.SearchRequest)
    # The query's k is checked even where a JSON body's k wins: a parameter out of the
    # documented range is a bad request whichever body comes with it.
    k = check_k(query_int(request.query_params, "k", 10), settings.max_k)
    if body is not None:
        k = check_k(body.k, settings.max_k)
        if (body.images is None) == (body.embeddings is None):
            raise InvalidInput("send exactly one of 'images' or 'embeddings'")
    if body is not None and body.embeddings is not None:
        if len(body.embeddings) > settings.max_images_per_request:
            raise InvalidInput(f"at most {settings.max_images_per_request} query vectors")
        queries = check_vectors(body.embeddings, engine.dim)
    else:
        queries, _ = await infer(request, engine, await decode_all(request, engine, settings,
                                                                   raws, names))
    f = body.filter if body is not None else None
    hits = await engine.search(queries, k, f and Filter.of(f.label, f.metadata))
    return NumpyJSON({"model": engine.model_id, "precision": settings.precision,
                      "results": [[h.__dict__ for h in row] for row in hits]})


@router.post("/v1/search", tags=["inference"], response_model=schemas.SearchResponse,
             responses=schemas.ERRORS, openapi_extra=schemas.image_body(schemas.SearchRequest))
@policy("any", fast=search_response)
async def search(request: Request, engine: EngineDep, settings: SettingsDep,
                 k: Annotated[int, Query(ge=1, description="for multipart / image bodies")
                              ] = 10,
                 ) -> NumpyJSON:
    return await search_response(request, engine, settings)


@router.post("/v1/classify", tags=["inference"], response_model=schemas.ClassifyResponse,
             responses=schemas.ERRORS, openapi_extra=schemas.image_body(schemas.ClassifyRequest))
@policy("any")
async def classify(request: Request, engine: EngineDep, settings: SettingsDep,
                   k: Annotated[int | None, Query(ge=1, description="for multipart / image "
                                                  "bodies; default min(5, classes)")] = None,
                   ) -> NumpyJSON:
    body, raws, names = await read_body(request, schemas.ClassifyRequest)
    classes = len(engine.bundle.classes)
    if k is not None:  # checked even where a JSON body's k wins, as on /v1/search
        check_k(k, classes)
    k = body.k if body is not None else k
    k = check_k(min(5, classes) if k is None else k, classes)
    _, logits = await infer(request, engine, await decode_all(request, engine, settings, raws,
                                                             names))
    return NumpyJSON({"model": engine.model_id, "precision": settings.precision,
                           "results": softmax_top(logits, engine.bundle.classes, k)})
