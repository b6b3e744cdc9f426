"""What the routes share: the JSON response class, the FastAPI dependencies (settings, the
ready engine, the API key), request-body parsing and decoding, and input checks."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from simclr_embed.service.admission import check_api_key
from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import (
    Forbidden,
    InvalidInput,
    NotReady,
    ServiceError,
    UnsupportedMedia,
)
from simclr_embed.service.handlers import validation_message
from simclr_embed.service.preprocess import decode_base64, finish_decode, open_checked
from simclr_embed.service.settings import Settings


class NumpyJSON(JSONResponse):
    """JSON via orjson, numpy arrays serialized natively (no per-float Python objects). A
    JSONResponse, so that OpenAPI documents each route's response model."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# --- dependencies ----------------------------------------------------------------------------
# Dependencies are `async def`: FastAPI runs a plain `def` one in a worker thread, a thread hop
# per dependency per request.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def check_ready(engine: Engine) -> Engine:
    """503 + Retry-After while the model loads: for the dependency and the hot path alike."""
    if not engine.ready:
        raise NotReady("model is loading", headers={"Retry-After": "2"})
    return engine


async def ready_engine(request: Request) -> Engine:
    return check_ready(request.app.state.engine)


async def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    if settings.api_key is None:
        raise Forbidden("gallery management is disabled: set SIMCLR_EMBED_API_KEY to enable it")
    check_api_key(settings, authorization, x_api_key)


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(ready_engine)]
AuthDep = Annotated[None, Depends(require_api_key)]


# --- request parsing -------------------------------------------------------------------------
def loads(raw: bytes) -> Any:
    """orjson, or the stdlib for what orjson refuses but Python clients send (json.dumps writes
    NaN and Infinity), so that such numbers get the 422 of a non-finite value, not a 400."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServiceError(f"request body is not valid JSON: {e}") from e


def parse_json(raw: bytes, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(loads(raw))
    except ValidationError as e:
        raise InvalidInput(validation_message(e.errors())) from e


async def read_body(request: Request, model: type[BaseModel]) -> tuple[Any | None, list[bytes]]:
    """(validated JSON body or None, raw image bytes) for JSON, multipart or image/* bodies."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = parse_json(await request.body(), model)
        return body, [decode_base64(s) for s in (getattr(body, "images", None) or [])]
    if ctype == "multipart/form-data":
        form = await request.form(max_files=10_000, max_fields=100)
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise InvalidInput("multipart body has no image files")
        return None, [await f.read() for f in files]
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return None, [await request.body()]
    raise UnsupportedMedia(f"unsupported content type {ctype or '(none)'!r}; send "
                           "application/json, multipart/form-data or image/*")


async def ensure_connected(request: Request) -> None:
    """Raises what Starlette raises when the client leaves mid-body; its one handler counts it
    and answers 499 (service/handlers.py)."""
    if await request.is_disconnected():
        raise ClientDisconnect()


# A thumbnail decodes in tens of microseconds: less than handing it to a decode thread and back.
INLINE_DECODE_PIXELS = 128 * 128


async def decode_all(request: Request, engine: Engine, settings: Settings,
                     raws: list[bytes]) -> np.ndarray:
    """Headers are checked here (400 / 413 before any pixel work); thumbnails decode on the
    event loop while no decode is queued, anything larger in the pool, one slot per decode
    thread. A request whose client has gone is dropped when its turn for a slot comes, before
    it costs a decode, and again before it costs a place in a model batch."""
    if not raws:
        raise InvalidInput("no images in the request")
    if len(raws) > settings.max_images_per_request:
        raise InvalidInput(f"{len(raws)} images in one request; the limit is "
                           f"{settings.max_images_per_request}")
    engine.admit(len(raws))
    loop = asyncio.get_running_loop()
    limits = (settings.max_image_pixels, settings.max_image_aspect, settings.max_decode_mb)
    imgs = [open_checked(raw, *limits) for raw in raws]
    waited = False

    async def one(img: Image.Image) -> np.ndarray:
        nonlocal waited
        if img.width * img.height <= INLINE_DECODE_PIXELS and not engine.decode_slots.locked():
            return finish_decode(img, engine.size)
        async with engine.decode_slots:
            waited = True
            await ensure_connected(request)
            return await loop.run_in_executor(engine.decode_pool, finish_decode, img,
                                              engine.size)

    arrays = [await one(imgs[0])] if len(imgs) == 1 else await asyncio.gather(*map(one, imgs))
    if waited:  # a client that sent its body microseconds ago has not gone: no check then
        await ensure_connected(request)
    return np.stack(arrays)


def check_k(k: int, limit: int) -> int:
    if not 1 <= k <= limit:
        raise InvalidInput(f"k must be between 1 and {limit}, got {k}")
    return k


def check_vectors(vectors: list[list[float]], dim: int) -> np.ndarray:
    if any(len(v) != dim for v in vectors):  # ragged rows would not even form an array
        raise InvalidInput(f"embeddings must each have {dim} numbers")
    q = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, dim), np.float32)
    if not np.isfinite(q).all():
        raise InvalidInput("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInput("an embedding is all zeros")
    return q / norms
