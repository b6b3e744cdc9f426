"""What the routes depend on: the JSON response class and the FastAPI dependencies (settings,
the chosen model's ready engine, held for the request). Bodies are read in service/bodies.py,
their images decoded and run in service/pipeline.py, inputs checked in service/checks.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import orjson
from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse

from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import NotReady
from simclr_embed.service.settings import Settings


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
    """503 + Retry-After once the batch loop has crashed past recovery (service/batcher.py,
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
