"""POST /v1/embed and /v1/search handed straight to their functions, past FastAPI's exception
middleware, route matching and dependency solving. In process those take ~90 us of event-loop
CPU per request against ~60 us for the whole of an embed itself (read, decode, batch, JSON);
under load the event loop is the one core the model threads share, so this is throughput
(docs/benchmarks.md, "Serving"; benchmarks/results/hot_path.json). For a search by vector at
50k it took ~0.1 ms off the search's cost over /healthz (0.52 against 0.63 ms, one interleaved
run of 3 x 300 queries).

Which routes: those that declare `fast=` in their policy (service/policy.py). Same functions,
same errors: the FastAPI routes run `embed_response` / `search_response` too,
and exceptions become responses through the app's own handlers (service/handlers.py). The
routes stay for OpenAPI and for benchmarks.servers.variant_server --no-hot-path. Everything else,
other methods on these paths included, goes on to FastAPI. This sits inside the Gate, so
admission, body limits, the API key and the request metrics are the same on both paths.
"""

from __future__ import annotations

from starlette.requests import Request

from simclr_embed.service import policy
from simclr_embed.service.deps import check_ready, holding
from simclr_embed.service.handlers import exception_response
from simclr_embed.service.models import Models
from simclr_embed.service.settings import Settings


class HotPath:
    def __init__(self, app, models: Models, settings: Settings) -> None:
        self.app, self.models, self.settings = app, models, settings

    async def __call__(self, scope, receive, send) -> None:
        route, rules = scope.get(policy.KEY, (None, policy.UNMATCHED))  # the Gate's finding
        if rules.fast is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        scope["route"] = route  # what the Gate labels its metrics with
        respond = rules.fast
        request = Request(scope, receive)
        try:
            with holding(check_ready(self.models.get(request.query_params.get("model")))) as e:
                response = await respond(request, e, self.settings)
        except Exception as e:  # each kind to its own handler, as FastAPI would
            response = await exception_response(request, e)
        try:
            await response(scope, receive, send)
        finally:
            await request.close()  # a multipart body's spooled files
