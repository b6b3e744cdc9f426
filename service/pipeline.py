"""A request's images through decode and the model: headers checked before any pixel work,
decodes scheduled on the event loop or the pool, the request dropped when its client has gone
or its deadline passed (service/deadline.py), then the engine's answer for its images."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import numpy as np
from fastapi import Request
from PIL import Image
from starlette.requests import ClientDisconnect

from simclr_embed.service import deadline, request_log, tracing
from simclr_embed.service.bodies import named
from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import InvalidInput, PayloadTooLarge
from simclr_embed.service.preprocess import finish_decode, open_checked
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES


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

    with tracing.span("decode", {"images": len(imgs)}):
        arrays = [await one(imgs[0], names[0])] if len(imgs) == 1 else \
            await asyncio.gather(*map(one, imgs, names))
    if waited:  # a client that sent its body microseconds ago has not gone: no check then
        await ensure_connected(request)
    took = time.perf_counter() - start
    engine.metrics.decode_seconds.observe(took)
    request_log.note(images=len(arrays), decode_ms=round(took * 1000, 3))
    return np.stack(arrays)
