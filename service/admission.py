"""The front door, as pure ASGI middleware (BaseHTTPMiddleware costs CPU per request). Every
request passes it in this order, so each refusal means the same on every route:

0. the route and its declared policy (service/policy.py), found once and left in the scope;
1. the key for the route's scope (service/auth.py), from the headers alone, before a byte of
   the body is read (401 / 403), and the request's deadline (service/deadline.py);
2. the body, received whole before the request costs anything else, as a reverse proxy buffers
   it: counted by the bytes that actually arrive (chunked too) against the route's limit (413)
   and the byte budget of every body held at once (503), and cut when it arrives slower than
   `min_upload_bytes_per_s` after `upload_grace_s`, or not within `body_timeout_s` (408); a
   client that leaves mid-body is counted and dropped (499);
3. only then a request slot and the model queue (503 + Retry-After), so a slow upload never
   holds a slot that a whole request could use;
4. the request metrics, in a `finally`, so that 500s are counted too.

A refusal never resets the connection: closing with unread bytes in the socket sends a reset
that makes the client drop the answer. Under `simclr-embed serve` a refusal before the body is
read closes with a lingering close (service/protocol.py); elsewhere a 503 leaves the connection
open (uvicorn reads the rest of the body and drops it) and only a 413 or 408 closes it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge
from starlette.requests import ClientDisconnect

from simclr_embed.service import deadline, policy, request_log, tracing
from simclr_embed.service.auth import authorize
from simclr_embed.service.errors import (
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
)
from simclr_embed.service.handlers import client_gone_response, error_response
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.policy import Policies
from simclr_embed.service.protocol import EXTENSION as PROTOCOL_EXTENSION
from simclr_embed.service.settings import Settings

# Which worker process answered (its pid): with --workers N, a client (and the tests) can tell.
WORKER_HEADER = (b"x-worker", str(os.getpid()).encode())


@dataclass
class Inflight:
    """Requests admitted past their body and not yet answered, and the body bytes held by
    every request being received or served: counted here, read by the engine to tell a lone
    request from one among many."""

    requests: int = 0
    bytes: int = 0
    gauge: Gauge | None = None  # simclr_embed_body_bytes, kept equal to `bytes`

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.gauge is not None:
            self.gauge.set(self.bytes)


class Gate:
    def __init__(self, app, settings: Settings, metrics: Metrics, inflight: Inflight,
                 queued_images: Callable[[], int], policies: Policies) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.inflight, self.queued_images, self.policies = inflight, queued_images, policies

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        notes = request_log.begin() if self.settings.access_log else None

        async def send_status(msg) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                msg["headers"] = [*msg.get("headers", ()), WORKER_HEADER]
            await send(msg)

        try:
            await self._handle(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            if notes is not None:
                request_log.emit(scope["method"], path, status[0], start, notes)

    async def _handle(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        scope[policy.KEY] = found = self.policies.resolve(scope)
        rules, held = found[1], 0
        if found[0] is not None:
            tracing.route(scope["method"], getattr(found[0], "path", scope["path"]))
        try:
            authorize(self.settings, rules.scope, scope["method"], headers)
            scope[deadline.KEY] = deadline.parse(headers)
            if scope["method"] != "POST":  # no route reads a body but POST's
                return await self.app(scope, receive, send)
            with tracing.span("receive body"):
                body, held = await self._receive_body(receive, headers,
                                                      rules.body_limit(self.settings))
        except ClientDisconnect:
            return await client_gone_response(self.metrics, rules)(scope, receive, send)
        except ServiceError as e:
            return await self._refuse(e, rules, scope, receive, send)
        try:
            with tracing.span("admission"):
                self._admit()
        except ServiceError as e:  # the body is read: the connection may stay open
            self.inflight.add_bytes(-held)
            return await self._refuse(e, rules, scope, receive, send, body_read=True)
        self.inflight.requests += 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.inflight.requests -= 1
            self.inflight.add_bytes(-held)

    async def _refuse(self, e: ServiceError, rules: policy.Policy, scope, receive, send,
                      body_read: bool = False) -> None:
        headers = dict(e.headers or {})
        if not body_read and (PROTOCOL_EXTENSION in scope.get("extensions", {})
                              or isinstance(e, PayloadTooLarge | RequestTimeout)):
            # The rest of the body will not be read: close, lingering where the protocol can
            # (service/protocol.py), or uvicorn would read and drop all of it.
            headers["Connection"] = "close"
        await error_response(e.status, e.code, e.message, headers, rules)(scope, receive, send)

    async def _receive_body(self, receive, headers: dict[str, str],
                            limit: int) -> tuple[bytes, int]:
        """(the whole body, the bytes of it now held in the budget)."""
        s, now = self.settings, self.inflight
        raw = headers.get("content-length")
        declared = int(raw) if raw is not None and raw.isdigit() else 0
        if declared > limit:
            raise PayloadTooLarge(f"request body is {declared} bytes, over this route's "
                                  f"{limit}-byte limit")
        if now.bytes and now.bytes + declared > s.max_inflight_bytes:
            raise self._overloaded()
        clock = _Clock(s)
        chunks: list[bytes] = []
        held = 0
        try:
            while True:
                msg = await clock.receive(receive, held)
                if msg["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk = msg.get("body", b"")
                if held + len(chunk) > limit:
                    raise PayloadTooLarge(f"request body is over this route's {limit}-byte "
                                          "limit")
                # A lone body may exceed the budget; one among others may not.
                if now.bytes - held and now.bytes + len(chunk) > s.max_inflight_bytes:
                    raise self._overloaded()
                now.add_bytes(len(chunk))
                held += len(chunk)
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), held
        except BaseException:
            now.add_bytes(-held)
            raise

    def _overloaded(self) -> Overloaded:
        self.metrics.rejected.inc()
        now = self.inflight
        return Overloaded(f"{now.requests} requests and {now.bytes} body bytes in progress; "
                          "retry shortly", headers={"Retry-After": "1"})

    def _admit(self) -> None:
        s, now = self.settings, self.inflight
        if now.requests >= s.max_inflight_requests or \
                self.queued_images() >= s.max_queue_images:
            raise self._overloaded()


class _Clock:
    """The pace a body must keep: after the grace period, at least min_upload_bytes_per_s on
    average since its start, and the whole of it within body_timeout_s."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.start = asyncio.get_running_loop().time()

    async def receive(self, receive, received: int) -> dict:
        s = self.s
        until = min(self.start + s.body_timeout_s,
                    self.start + s.upload_grace_s + received / s.min_upload_bytes_per_s)
        try:  # asyncio.timeout, not wait_for: no extra task per receive
            async with asyncio.timeout_at(until):
                return await receive()
        except TimeoutError:
            waited = asyncio.get_running_loop().time() - self.start
            raise RequestTimeout(
                f"request body too slow: {received} bytes in {waited:.1f} s (at least "
                f"{s.min_upload_bytes_per_s} bytes/s after {s.upload_grace_s:g} s, all of it "
                f"within {s.body_timeout_s:g} s)") from None


def _replay(body: bytes, receive):
    """receive() for the app: the buffered body once, then the connection's own messages
    (a disconnect, for the routes that check)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
