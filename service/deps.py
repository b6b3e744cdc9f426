"""What the routes share: the JSON response class, the FastAPI dependencies (settings, the
ready engine, the API key), request-body parsing and decoding, and input checks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from simclr_embed.service import deadline, request_log, tracing
from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import (
    BadImage,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMedia,
)
from simclr_embed.service.fetch import fetch_image
from simclr_embed.service.handlers import validation_message
from simclr_embed.service.preprocess import decode_base64, finish_decode, open_checked
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES


class NumpyJSON(JSONResponse):
    """JSON via orjson, numpy arrays serialized natively (no per-float Python objects). A
    JSONResponse, so that OpenAPI documents each route's response model."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# --- dependencies ----------------------------------------------------------------------------
# Dependencies are `async def`: FastAPI runs a plain `def` one in a worker thread, a thread hop
# per dependency per request. Keys are checked by the Gate, before the body is read.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def check_ready(engine: Engine) -> Engine:
    """503 + Retry-After once the batch loop has crashed past recovery (service/engine.py,
    _supervise): for the dependency and the hot path alike. A server still loading does not
    listen yet."""
    if not engine.ready:
        raise NotReady("the model is not ready: its batch loop failed; see the server's log",
                       headers={"Retry-After": "2"})
    return engine


async def ready_engine(request: Request, model: Annotated[str | None, Query(
        description="which served model (GET /v1/models: its id or its bundle's name); "
        "default the first")] = None) -> AsyncIterator[Engine]:
    """The chosen model's engine, held for the request (a swap drains on it)."""
    with holding(check_ready(request.app.state.models.get(model))) as engine:
        yield engine


@contextmanager
def holding(engine: Engine) -> Iterator[Engine]:
    engine.users += 1
    try:
        yield engine
    finally:
        engine.users -= 1


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(ready_engine)]


# --- request parsing -------------------------------------------------------------------------
# Parsing a body this large (JSON, then base64) takes long enough to stall every other request
# on the event loop: it goes to a thread.
OFF_LOOP_BYTES = 256 * 1024


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


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, model: type[BaseModel], hint: str = "") -> Any:
    """The one JSON reader of every route: the body the Gate received, validated against
    `model` (a 422 naming each field that is wrong, unknown fields included). `hint` shows
    the body wanted, for a client that sent another content type."""
    ctype = media_type(request)
    if ctype != "application/json":
        raise UnsupportedMedia(f"unsupported content type {ctype or '(none)'!r}; send "
                               f"application/json{hint}")
    raw = await request.body()
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, raw, model)
    return parse_json(raw, model)


def named(name: str, fn, *args):
    """fn(*args), its ServiceError prefixed with the item's name (and `param` set to it)."""
    try:
        return fn(*args)
    except ServiceError as e:
        raise e.about(name) from e


def decode_strings(items: list[str], names: list[str]) -> list[bytes]:
    return [named(n, decode_base64, i) for i, n in zip(items, names, strict=True)]


def is_url(item: str) -> bool:
    return item[:8].lower().startswith(("http://", "https://"))


async def fetch_urls(items: list[str], names: list[str], settings: Settings) -> list[bytes]:
    """Image URLs fetched side by side in threads, when their hosts are listed."""
    rules = [h.strip().lower() for h in settings.fetch_hosts.split(",") if h.strip()]
    if not rules:
        raise BadImage(f"{names[0]}: image URLs are not fetched here (SIMCLR_EMBED_FETCH_HOSTS "
                       "is empty): send the image as base64 or a data URL", param=names[0])
    return await asyncio.gather(*(asyncio.to_thread(
        named, n, fetch_image, u, rules, settings.max_body_bytes, settings.fetch_timeout_s)
        for u, n in zip(items, names, strict=True)))


async def decode_base64_images(items: list[str], names: list[str], settings: Settings
                               ) -> list[bytes]:
    """base64 images or data URLs -> bytes (in a thread when there is much of it); http(s)
    URLs fetched (service/fetch.py)."""
    urls = [n for n, i in enumerate(items) if is_url(i)]
    if urls:
        rest = [n for n in range(len(items)) if not is_url(items[n])]
        got = dict(zip(urls, await fetch_urls([items[n] for n in urls],
                                              [names[n] for n in urls], settings), strict=True))
        got |= zip(rest, await decode_base64_images([items[n] for n in rest],
                                                    [names[n] for n in rest], settings),
                   strict=True)
        return [got[n] for n in range(len(items))]
    if len(items) > 1 and sum(map(len, items)) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(decode_strings, items, names)
    return decode_strings(items, names)


async def read_body(request: Request, model: type[BaseModel]
                    ) -> tuple[Any | None, list[bytes], list[str]]:
    """(validated JSON body or None, raw image bytes, each image's name for errors) for JSON,
    multipart or image/* bodies."""
    ctype = media_type(request)
    if ctype == "application/json":
        body = await read_json(request, model)
        images = getattr(body, "images", None) or []
        names = [f"images[{n}]" for n in range(len(images))]
        settings: Settings = request.app.state.settings
        return body, await decode_base64_images(images, names, settings), names
    if ctype == "multipart/form-data":
        form = await request.form(max_files=10_000, max_fields=100)
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise InvalidInput("multipart body has no image files")
        names = [f"files[{n}] ({f.filename!r})" if f.filename else f"files[{n}]"
                 for n, f in enumerate(files)]
        return None, [await f.read() for f in files], names
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return None, [await request.body()], ["body"]
    raise UnsupportedMedia(f"unsupported content type {ctype or '(none)'!r}; send "
                           "application/json, multipart/form-data or image/*")


async def infer(request: Request, engine: Engine, images: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The model's answer for a request's images, under the request's deadline; its place in
    the queue is freed if its client leaves while it waits."""
    return await engine.infer(images, deadline.of(request), partial(client_left, request))


async def client_left(request: Request) -> None:
    """Returns once the client has closed the connection (the body was read whole before:
    what the connection says next is its disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def ensure_connected(request: Request) -> None:
    """Raises what Starlette raises when the client leaves mid-body; its one handler counts it
    and answers 499 (service/handlers.py)."""
    if await request.is_disconnected():
        raise ClientDisconnect()


def open_all(raws: list[bytes], names: list[str], settings: Settings) -> list[Image.Image]:
    """Every header checked (400 / 413 naming the item), then the request's decode budget."""
    limits = (settings.max_image_pixels, settings.max_image_aspect, settings.max_decode_mb)
    imgs = [named(n, open_checked, raw, *limits) for raw, n in zip(raws, names, strict=True)]
    pixels = sum(i.width * i.height for i in imgs)
    if pixels > settings.max_request_pixels:
        raise PayloadTooLarge(f"the request's {len(imgs)} images hold {pixels} pixels, over "
                              f"the {settings.max_request_pixels}-pixel decode budget of one "
                              "request: send fewer or smaller images")
    return imgs


async def decode_all(request: Request, engine: Engine, settings: Settings,
                     raws: list[bytes], names: list[str] | None = None) -> np.ndarray:
    """Headers are checked here (400 / 413 before any pixel work); thumbnails decode on the
    event loop while no decode is queued, anything larger in the pool, one slot per decode
    thread. A request whose client has gone is dropped when its turn for a slot comes, before
    it costs a decode, and again before it costs a place in a model batch; so is one whose
    deadline passed (service/deadline.py). Errors name the item (`names`)."""
    if not raws:
        raise InvalidInput("no images in the request")
    if len(raws) > settings.max_images_per_request:
        raise InvalidInput(f"{len(raws)} images in one request; the limit is "
                           f"{settings.max_images_per_request}")
    names = names or [f"images[{n}]" for n in range(len(raws))]
    deadline.check(request, engine.metrics, "decode")
    engine.admit(len(raws))
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    imgs = open_all(raws, names, settings)
    waited = False

    async def one(img: Image.Image, name: str) -> np.ndarray:
        nonlocal waited
        if img.width * img.height <= CASES.inline_decode_pixels and \
                not engine.decode_slots.locked():  # a thumbnail: under a thread hop's cost
            return named(name, finish_decode, img, engine.size)
        engine.metrics.decoding.inc()
        try:
            async with engine.decode_slots:
                waited = True
                await ensure_connected(request)
                deadline.check(request, engine.metrics, "decode")
                return await loop.run_in_executor(engine.decode_pool, named, name,
                                                  finish_decode, img, engine.size)
        finally:
            engine.metrics.decoding.dec()

    with tracing.span("decode", images=len(imgs)):
        arrays = [await one(imgs[0], names[0])] if len(imgs) == 1 else \
            await asyncio.gather(*map(one, imgs, names))
    if waited:  # a client that sent its body microseconds ago has not gone: no check then
        await ensure_connected(request)
    took = time.perf_counter() - start
    engine.metrics.decode_seconds.observe(took)
    request_log.note(images=len(arrays), decode_ms=round(took * 1000, 3))
    return np.stack(arrays)


_INT = TypeAdapter(int)


def query_int(params, name: str, default: int) -> int:
    """An integer query parameter, refused in the words FastAPI uses for a route's `int`
    parameter (the hot path has no FastAPI; service/hot_path.py)."""
    raw = params.get(name)
    try:
        return default if raw is None else _INT.validate_python(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", name)}
                                      for err in e.errors()]) from None


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
