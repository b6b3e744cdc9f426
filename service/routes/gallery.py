"""The gallery: list, get, add, delete (one or several). Changes need the API key."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from simclr_embed.service import schemas
from simclr_embed.service.bodies import decode_base64_images, read_json
from simclr_embed.service.checks import check_vectors
from simclr_embed.service.deps import EngineDep, NumpyJSON, SettingsDep
from simclr_embed.service.duplicates import (
    calibrated_threshold,
    find_pairs,
    report,
)
from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import Conflict, InvalidInput, NotFound
from simclr_embed.service.page import png_bytes
from simclr_embed.service.pipeline import decode_all, infer
from simclr_embed.service.policy import policy

router = APIRouter()

ADD_HINT = (' such as {"items": [{"id": "cats/1.jpg", "image": "<base64 or data URL>", '
            '"label": "cat"}]}; `simclr-embed index FOLDER` adds a folder of files')


@router.get("/v1/gallery", tags=["gallery"], responses=schemas.ERRORS)
@policy("read")
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


# Declared before /v1/gallery/{item_id:path}, which would take "map" for an id.
@router.get("/v1/gallery/map", tags=["gallery"], responses=schemas.ERRORS)
@policy("read")
async def gallery_map(engine: EngineDep) -> dict:
    """A 2-D map of the gallery (UMAP, or PCA without umap-learn), at most 20,000 points,
    made off the request path: `ready` is false until the first is made, `refreshing` while
    a newer one is made (service/gallery_map.py)."""
    return await asyncio.to_thread(engine.gallery_map.answer)


@router.post("/v1/gallery/duplicates", tags=["gallery"], responses=schemas.ERRORS,
             openapi_extra=schemas.json_body(schemas.DuplicatesRequest))
@policy("read", body="ids")
async def gallery_duplicates(request: Request, engine: EngineDep,
                             settings: SettingsDep) -> dict:
    """Pairs of gallery items that are exact duplicates (the same vector up to rounding: the
    same pixels) or near ones (cosine at or above the bundle's calibrated threshold), and
    their groups."""
    body = await read_json(request, schemas.DuplicatesRequest)
    threshold = body.threshold or calibrated_threshold(engine.bundle.manifest,
                                                       settings.precision)
    if threshold is None:
        raise Conflict("this bundle has no calibrated near-duplicate threshold: give "
                       '{"threshold": 0.9}, or calibrate it: simclr-embed duplicates '
                       "--calibrate --bundle BUNDLE --data DATA")
    limit = min(body.limit, settings.max_list_items)  # what one answer lists; all are counted
    return await asyncio.to_thread(gallery_duplicate_pairs, engine, threshold, limit)


def gallery_duplicate_pairs(engine: Engine, threshold: float, limit: int) -> dict:
    ids, _, vectors = engine.gallery.items()
    pairs = find_pairs(vectors, None, threshold)
    return report(ids, pairs, threshold, limit)


@router.get("/v1/gallery/{item_id:path}", tags=["gallery"], responses=schemas.ERRORS)
@policy("read")
async def gallery_get(item_id: str, engine: EngineDep) -> NumpyJSON:
    """One item; ids may contain '/' (bundle items are '<class>/<n>')."""
    found = await asyncio.to_thread(engine.gallery.get, item_id)
    if found is None:
        raise NotFound(f"no gallery item with id {item_id!r}")
    return NumpyJSON({"id": item_id, "label": found[0], "embedding": found[1],
                      "metadata": found[2]})


@router.post("/v1/gallery", tags=["gallery"], responses=schemas.ERRORS,
             openapi_extra=schemas.json_body(schemas.GalleryAddRequest))
@policy("write")
async def gallery_add(request: Request, engine: EngineDep, settings: SettingsDep) -> dict:
    """Items with an image (base64 or a data URL) or an embedding; needs the API key."""
    items = (await read_json(request, schemas.GalleryAddRequest, ADD_HINT)).items
    if len(items) > settings.max_images_per_request:
        raise InvalidInput(f"at most {settings.max_images_per_request} items per request")
    if len({i.id for i in items}) != len(items):
        raise InvalidInput("item ids must be unique within a request")
    if any((i.image is None) == (i.embedding is None) for i in items):
        raise InvalidInput("each item needs exactly one of 'image' or 'embedding'")
    if any(len(i.label or "") > settings.max_label_chars for i in items):
        raise InvalidInput(f"labels are at most {settings.max_label_chars} characters")
    if any(len(json.dumps(i.metadata)) > schemas.MAX_METADATA_BYTES for i in items if i.metadata):
        raise InvalidInput(f"an item's metadata is at most {schemas.MAX_METADATA_BYTES} bytes "
                           "of JSON")
    emb = np.zeros((len(items), engine.dim), np.float32)
    thumbs: list[bytes | None] = [None] * len(items)
    with_image = [n for n, i in enumerate(items) if i.image is not None]
    if with_image:
        names = [f"items[{n}] (id {items[n].id!r})" for n in with_image]
        raws = await decode_base64_images([items[n].image for n in with_image], names,
                                          settings)
        pixels = await decode_all(request, engine, settings, raws, names)  # (n, S, S, 3)
        emb[with_image], _ = await infer(request, engine, pixels)
        for n, px in zip(with_image, pixels, strict=True):
            thumbs[n] = png_bytes(px)  # what the page shows for this item
    with_vec = [n for n, i in enumerate(items) if i.embedding is not None]
    if with_vec:
        emb[with_vec] = check_vectors([items[n].embedding for n in with_vec], engine.dim)
    await asyncio.to_thread(engine.gallery.add, [i.id for i in items],
                            [i.label for i in items], emb, thumbs, [i.metadata for i in items])
    size = await asyncio.to_thread(engine.gallery.size)
    engine.metrics.gallery_size.set(size)
    return {"added": [i.id for i in items], "size": size}


async def delete_ids(engine: Engine, ids: list[str]) -> tuple[list[str], int]:
    deleted = await asyncio.to_thread(engine.gallery.delete, ids)
    size = await asyncio.to_thread(engine.gallery.size)
    engine.metrics.gallery_size.set(size)
    return deleted, size


@router.delete("/v1/gallery/{item_id:path}", tags=["gallery"], responses=schemas.ERRORS)
@policy("write")
async def gallery_delete(item_id: str, engine: EngineDep) -> dict:
    deleted, size = await delete_ids(engine, [item_id])
    if not deleted:
        raise NotFound(f"no gallery item with id {item_id!r}")
    return {"deleted": item_id, "size": size}


@router.post("/v1/gallery/delete", tags=["gallery"], responses=schemas.ERRORS,
             openapi_extra=schemas.json_body(schemas.GalleryDeleteRequest))
@policy("write", body="ids")
async def gallery_bulk_delete(request: Request, engine: EngineDep,
                              settings: SettingsDep) -> dict:
    """Several ids at once; those that do not exist are listed as missing, not an error."""
    body = await read_json(request, schemas.GalleryDeleteRequest)
    if len(body.ids) > settings.max_list_items:
        raise InvalidInput(f"at most {settings.max_list_items} ids per request")
    deleted, size = await delete_ids(engine, list(dict.fromkeys(body.ids)))
    return {"deleted": deleted, "missing": [i for i in body.ids if i not in set(deleted)],
            "size": size}
