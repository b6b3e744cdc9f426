"""OpenAI-compatible routes, so the official `openai` client (and TEI / infinity users' code)
works unchanged: `client.embeddings.create(model=..., input=[...])` with images as data URLs or
base64 strings (http(s) URLs only for the hosts SIMCLR_EMBED_FETCH_HOSTS lists:
service/fetch.py). Errors on these routes take OpenAI's shape ({"error": {"message", "type",
"param", "code"}})."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field

from simclr_embed.service import encodings, schemas
from simclr_embed.service.bodies import decode_base64_images, read_json
from simclr_embed.service.deps import NumpyJSON, SettingsDep, check_ready, holding
from simclr_embed.service.engine import Engine
from simclr_embed.service.models import Models
from simclr_embed.service.pipeline import decode_all, infer
from simclr_embed.service.policy import policy
from simclr_embed.service.settings import Settings

ALIASES = ("simclr-embed", "simclr-resnet18")

router = APIRouter(tags=["openai"])


class EmbeddingsRequest(schemas.Strict):
    input: schemas.Base64Image | Annotated[list[schemas.Base64Image], Field(min_length=1)] = Field(
        ..., description="images as data URLs (data:image/png;base64,...) or plain base64")
    model: str = Field(..., description="the served model id (GET /v1/models) or "
                       "'simclr-embed'")
    encoding_format: encodings.Format = Field(
        "float", description="float, base64 (float32), float16, int8 (each item gets its "
        "`scale`), binary or ubinary (sign bits): service/encodings.py")
    dimensions: int | None = Field(None, ge=1, description="the first principal components "
                                   "of the model's space (the bundle's PCA), re-normalized")
    user: str | None = None


@router.post("/v1/embeddings", responses=schemas.ERRORS,
             openapi_extra=schemas.json_body(EmbeddingsRequest))
@policy("any", openai_errors=True)
async def embeddings(request: Request, settings: SettingsDep) -> NumpyJSON:
    body = await read_json(request, EmbeddingsRequest)
    models: Models = request.app.state.models
    with holding(check_ready(models.get(None if body.model in ALIASES else body.model))) as e:
        return await embed(request, e, settings, body)


async def embed(request: Request, engine: Engine, settings: Settings, body: EmbeddingsRequest
                ) -> NumpyJSON:
    encodings.check(body.encoding_format, body.dimensions, engine.dim, engine.pca)
    items = [body.input] if isinstance(body.input, str) else body.input
    names = ["input"] if isinstance(body.input, str) else [f"input[{n}]"
                                                           for n in range(len(items))]
    raws = await decode_base64_images(items, names, settings)
    images = await decode_all(request, engine, settings, raws, names)
    emb, _ = await infer(request, engine, images)
    vectors, scales = encodings.output(emb, engine.pca, body.dimensions,
                                       body.encoding_format)
    data = [{"object": "embedding", "index": n, "embedding": v} for n, v in enumerate(vectors)]
    for item, scale in zip(data, scales or (), strict=False):
        item["scale"] = scale
    return NumpyJSON({"object": "list", "data": data, "model": engine.model_id,
                      "usage": {"prompt_tokens": 0, "total_tokens": 0}})


@router.get("/v1/models", responses=schemas.ERRORS)
@policy("any", openai_errors=True)
async def models(request: Request) -> dict:
    """Every served model, the default first; `bundle` is another name `model` accepts."""
    engines = request.app.state.models.engines
    sizes = [await e.gallery_size() for e in engines]
    return {"object": "list", "data": [model_card(e, n) for e, n in zip(engines, sizes,
                                                                         strict=True)]}


def model_card(engine: Engine, gallery_size: int) -> dict:
    created = int(np.datetime64(engine.bundle.manifest["created"].rstrip("Z"), "s").astype(int))
    return {"id": engine.model_id, "object": "model", "created": created,
            "owned_by": "simclr-embed", "bundle": engine.bundle_dir.name,
            "precision": engine.settings.precision,
            "provider": engine.model.provider, "gallery_size": gallery_size}
