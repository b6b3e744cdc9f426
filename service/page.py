"""The retrieval page at / (one static HTML file, no CDN) and the gallery thumbnails it shows."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from PIL import Image

from simclr_embed.service import schemas
from simclr_embed.service.auth import COOKIE, SESSION_S, session_cookie
from simclr_embed.service.deps import EngineDep, SettingsDep
from simclr_embed.service.errors import NotFound
from simclr_embed.service.policy import policy

PAGE = Path(__file__).with_name("static") / "index.html"

router = APIRouter()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@router.get("/", include_in_schema=False)
@policy("open")
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


@router.get("/v1/thumbnails/{item_id:path}", tags=["gallery"], response_class=Response,
            responses={**schemas.ERRORS, 200: {"content": {"image/png": {}}}})
@policy("read")
async def thumbnail(item_id: str, engine: EngineDep) -> Response:
    """A gallery item's thumbnail (PNG): from the bundle, or the image given when it was added."""
    found = await asyncio.to_thread(engine.thumbnail, item_id)
    if found is None:
        raise NotFound(f"no thumbnail for gallery item {item_id!r}")
    data = found if isinstance(found, bytes) else png_bytes(found)
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=300"})


@router.post("/v1/session", tags=["gallery"], status_code=204, response_class=Response,
             responses=schemas.ERRORS)
@policy("key")
async def session(settings: SettingsDep) -> Response:
    """Trades the key in the headers (the API key or the read key) for a read-only session
    cookie, so that the page's <img> tags can load thumbnails when reads need a key."""
    response = Response(status_code=204)
    response.set_cookie(COOKIE, session_cookie(settings), max_age=SESSION_S, httponly=True,
                        samesite="strict", path="/")
    return response
