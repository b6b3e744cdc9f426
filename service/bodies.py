"""Request bodies to image bytes: JSON validated against the route's model (a 422 naming each
wrong field), multipart files, raw image/* bodies; base64 strings and data URLs decoded, image
URLs fetched (service/fetch.py). Errors name the item they concern."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from simclr_embed.service.errors import BadImage, InvalidInput, ServiceError, UnsupportedMedia
from simclr_embed.service.fetch import fetch_image
from simclr_embed.service.handlers import validation_message
from simclr_embed.service.preprocess import decode_base64
from simclr_embed.service.settings import Settings

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
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise InvalidInput("multipart body has no image files")
        names = [f"files[{n}] ({f.filename!r})" if f.filename else f"files[{n}]"
                 for n, f in enumerate(files)]
        return None, [await f.read() for f in files], names
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return None, [await request.body()], ["body"]
    raise UnsupportedMedia(f"unsupported content type {ctype or '(none)'!r}; send "
                           "application/json, multipart/form-data or image/*")
