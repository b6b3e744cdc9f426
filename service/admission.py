"""The front door, as pure ASGI middleware (BaseHTTPMiddleware costs CPU per request):

* admission at arrival, before a byte of the body is read: a POST is refused with 503 +
  Retry-After when the requests or body bytes already admitted, or the images queued for the
  model, are at their bounds, so overload is shed before it costs decode time or memory;
* the body's byte limit (413) and a deadline for receiving it (408), so slow or endless bodies
  cannot hold a slot;
* the API key on every route but the probes, when the settings ask for it;
* the request metrics, in a `finally`, so that 500s are counted too.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable

from simclr_embed.service.engine import Inflight
from simclr_embed.service.errors import (
    Forbidden,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
)
from simclr_embed.service.handlers import error_response
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.settings import Settings

OPEN_PATHS = ("/healthz", "/readyz")  # probes never need the key


def check_api_key(settings: Settings, authorization: str | None, x_api_key: str | None) -> None:
    """401 without a usable key, 403 with a wrong one. `Authorization` must be
    'Bearer <key>' (scheme case-insensitive); a bare value is not taken as the key."""
    if settings.api_key is None:
        raise Forbidden("this route needs an API key, and none is configured: set "
                        "SIMCLR_EMBED_API_KEY")
    given = x_api_key
    if given is None and authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <key>'")
        given = token.strip()
    if not given:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or X-API-Key")
    if not hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise Forbidden("wrong API key")


class Gate:
    def __init__(self, app, settings: Settings, metrics: Metrics, inflight: Inflight,
                 queued_images: Callable[[], int]) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.inflight, self.queued_images = inflight, queued_images

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(msg) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self._handle(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)

    async def _handle(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        try:
            if self.settings.require_api_key and scope["path"] not in OPEN_PATHS:
                check_api_key(self.settings, headers.get("authorization"),
                              headers.get("x-api-key"))
            length = self._declared_length(headers)
            if scope["method"] != "POST":
                return await self.app(scope, receive, send)
            self._admit(length)
        except ServiceError as e:
            # The body is still on its way: close the connection with the answer, or the server
            # would read and discard all of it to keep the connection alive.
            headers = {**(e.headers or {}), "Connection": "close"}
            return await error_response(e.status, e.code, e.message, headers,
                                        scope["path"])(scope, receive, send)
        self.inflight.requests += 1
        self.inflight.bytes += length
        try:
            await self.app(scope, self._bounded(receive), send)
        finally:
            self.inflight.requests -= 1
            self.inflight.bytes -= length

    def _declared_length(self, headers: dict[str, str]) -> int:
        raw = headers.get("content-length")
        length = int(raw) if raw is not None and raw.isdigit() else 0
        if length > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"request body is {length} bytes, over the "
                                  f"{self.settings.max_body_bytes}-byte limit")
        return length

    def _admit(self, length: int) -> None:
        s, now = self.settings, self.inflight
        full = (now.requests >= s.max_inflight_requests
                or (now.bytes + length > s.max_inflight_bytes and now.requests > 0)
                or self.queued_images() >= s.max_queue_images)
        if full:
            self.metrics.rejected.inc()
            raise Overloaded(f"{now.requests} requests ({now.bytes} bytes) in progress; "
                             "retry shortly", headers={"Retry-After": "1"})

    def _bounded(self, receive):
        """receive() with the byte limit and the body deadline."""
        limit, timeout = self.settings.max_body_bytes, self.settings.body_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        received, complete = 0, False

        async def bounded_receive():
            nonlocal received, complete
            if complete:  # after the body: disconnect checks, untimed
                return await receive()
            try:  # asyncio.timeout, not wait_for: no extra task per receive
                async with asyncio.timeout_at(deadline):
                    msg = await receive()
            except TimeoutError:
                raise RequestTimeout(f"request body not received within {timeout:g} s") from None
            received += len(msg.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
            complete = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        return bounded_receive
