"""OpenAI-compatible routes, so the official `openai` client (and TEI / infinity users' code)
works unchanged: `client.embeddings.create(model=..., input=[...])` with images as data URLs or
base64 strings. Errors on these routes take OpenAI's shape ({"error": {"message", "type",
"param", "code"}}); the service fetches nothing, so http(s) URLs are refused."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field

from simclr_embed.service import schemas
from simclr_embed.service.deps import (
    EngineDep,
    NumpyJSON,
    SettingsDep,
    decode_all,
    named,
    read_json,
)
from simclr_embed.service.errors import BadImage, InvalidInput, NotFound
from simclr_embed.service.preprocess import decode_base64

ALIASES = ("simclr-embed", "simclr-resnet18")

router = APIRouter(tags=["openai"])


class EmbeddingsRequest(schemas.Strict):
    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        ..., description="images as data URLs (data:image/png;base64,...) or plain base64")
    model: str = Field(..., description="the served model id (GET /v1/models) or "
                       "'simclr-embed'")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must equal the model's dimension")
    user: str | None = None


def image_bytes(item: str) -> bytes:
    if item.startswith(("http://", "https://")):
        raise BadImage("image URLs are not fetched: send the image as a data URL "
                       "(data:image/png;base64,...) or base64")
    return decode_base64(item)


def encode(vec: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":  # what the openai client asks for by default: little-endian float32
        return base64.b64encode(vec.astype("<f4").tobytes()).decode()
    return vec


@router.post("/v1/embeddings", responses=schemas.ERRORS,
             openapi_extra=schemas.json_body(EmbeddingsRequest))
async def embeddings(request: Request, engine: EngineDep, settings: SettingsDep) -> NumpyJSON:
    body = await read_json(request, EmbeddingsRequest)
    if body.model not in (engine.model_id, *ALIASES):
        raise NotFound(f"model {body.model!r} is not served here; GET /v1/models lists "
                       f"{engine.model_id!r}")
    if body.dimensions is not None and body.dimensions != engine.dim:
        raise InvalidInput(f"dimensions must be {engine.dim} for this model")
    items = [body.input] if isinstance(body.input, str) else body.input
    names = ["input"] if isinstance(body.input, str) else [f"input[{n}]"
                                                           for n in range(len(items))]
    raws = [named(n, image_bytes, i) for i, n in zip(items, names, strict=True)]
    images = await decode_all(request, engine, settings, raws, names)
    emb, _ = await engine.infer(images)
    data = [{"object": "embedding", "index": n, "embedding": encode(e, body.encoding_format)}
            for n, e in enumerate(emb)]
    return NumpyJSON({"object": "list", "data": data, "model": engine.model_id,
                      "usage": {"prompt_tokens": 0, "total_tokens": 0}})


@router.get("/v1/models", responses=schemas.ERRORS)
async def models(engine: EngineDep) -> dict:
    created = int(np.datetime64(engine.bundle.manifest["created"].rstrip("Z"), "s").astype(int))
    return {"object": "list", "data": [{"id": engine.model_id, "object": "model",
                                        "created": created, "owned_by": "simclr-embed"}]}
