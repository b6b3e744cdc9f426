"""The one place where errors become HTTP responses: domain errors (service/errors.py) and
FastAPI's own, all as {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from simclr_embed.service import policy
from simclr_embed.service.errors import ServiceError, StorageError, StorageFull
from simclr_embed.service.policy import UNMATCHED, Policy, leaf_routes

log = logging.getLogger(__name__)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's error list as one line: 'field.path: what is wrong; ...'."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors)


def openai_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    kind = {401: "authentication_error", 403: "permission_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500
                                          else "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, rules: Policy = UNMATCHED,
                   param: str | None = None) -> JSONResponse:
    """Every error answer of the service: OpenAI's shape on the routes that declare it, ours
    elsewhere."""
    body = openai_body(status, code, message, param) if rules.openai_errors else {
        "error": {"code": code, "message": message, **({"item": param} if param else {})}}
    return JSONResponse(body, status, headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def allowed_methods(request: Request) -> list[str]:
    """The methods served at this request's path (RFC 9110's Allow). As in OpenAPI, a concrete
    path goes before templated ones: /v1/gallery/delete allows POST, not the GET and DELETE of
    /v1/gallery/{item_id}."""
    found: dict[bool, set[str]] = {True: set(), False: set()}  # concrete path? -> methods
    for route in leaf_routes(request.app.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            concrete = "{" not in getattr(route, "path", "{")
            found[concrete] |= getattr(route, "methods", None) or set()
    return sorted(found[True] or found[False])


async def service_error(request: Request, e: ServiceError) -> JSONResponse:
    if isinstance(e, StorageError | StorageFull):  # a gallery write the store refused
        request.app.state.metrics.storage_errors.labels(e.code).inc()
    return error_response(e.status, e.code, e.message, e.headers, policy.of(request.scope), e.param)


async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_input", validation_message(e.errors()), None,
                          policy.of(request.scope))


async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    headers = dict(e.headers or {})
    if e.status_code == 405:  # Starlette names only the first route's methods
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(e.status_code, _HTTP_CODES.get(e.status_code, "http_error"),
                          str(e.detail), headers, policy.of(request.scope))


def client_gone_response(metrics, rules: Policy) -> JSONResponse:
    """The client left (mid-body, or before its decode or model batch): counted, answered
    with nginx's 499, not logged as a crash. For the Gate and the handler alike."""
    metrics.client_gone.inc()
    return error_response(499, "client_closed_request", "client closed the connection", None,
                          rules)


async def client_gone(request: Request, _: ClientDisconnect) -> JSONResponse:
    return client_gone_response(request.app.state.metrics, policy.of(request.scope))


async def internal(request: Request, e: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=e)
    return error_response(500, "internal", f"internal error: {type(e).__name__}", None,
                          policy.of(request.scope))


Handler = Callable[[Request, Any], Awaitable[JSONResponse]]
HANDLERS: tuple[tuple[type[Exception], Handler], ...] = (
    (ServiceError, service_error), (RequestValidationError, invalid_request),
    (HTTPException, http_error), (ClientDisconnect, client_gone), (Exception, internal))


async def exception_response(request: Request, e: Exception) -> JSONResponse:
    """What FastAPI would answer for e, for code that runs outside its routes (the hot path)."""
    handler = next(h for kind, h in HANDLERS if isinstance(e, kind))
    return await handler(request, e)


def install_handlers(app: FastAPI) -> None:
    for kind, handler in HANDLERS:
        app.add_exception_handler(kind, handler)
