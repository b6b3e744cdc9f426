"""POST /v1/embed handed straight to its function, past FastAPI's exception middleware, route
matching and dependency solving. In process those take ~90 us of event-loop CPU per request
against ~60 us for the whole of the embed itself (read, decode, batch, JSON); under load the
event loop is the one core the model threads share, so this is throughput (README, "Serving";
benchmarks/results/hot_path.json).

Same function, same errors: the FastAPI route runs `embed_response` too, and exceptions become
responses through the app's own handlers (service/handlers.py). The route stays for OpenAPI and
for SIMCLR_EMBED_HOT_PATH=false. Everything else, other methods on this path included, goes on
to FastAPI. This sits inside the Gate, so admission, body limits, the API key and the request
metrics are the same on both paths.
"""

from __future__ import annotations

from starlette.requests import Request

from simclr_embed.service.deps import check_ready
from simclr_embed.service.engine import Engine
from simclr_embed.service.handlers import exception_response
from simclr_embed.service.routes import inference
from simclr_embed.service.settings import Settings

PATH = "/v1/embed"
ROUTE = next(r for r in inference.router.routes if getattr(r, "path", None) == PATH)


class HotPath:
    def __init__(self, app, engine: Engine, settings: Settings) -> None:
        self.app, self.engine, self.settings = app, engine, settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        scope["route"] = ROUTE  # what the Gate labels its metrics with
        request = Request(scope, receive)
        try:
            engine = check_ready(self.engine)
            response = await inference.embed_response(request, engine, self.settings)
        except Exception as e:  # each kind to its own handler, as FastAPI would
            response = await exception_response(request, e)
        try:
            await response(scope, receive, send)
        finally:
            await request.close()  # a multipart body's spooled files
