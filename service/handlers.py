"""The one place where errors become HTTP responses: domain errors (service/errors.py) and
FastAPI's own, all as {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from simclr_embed.service.errors import ServiceError

log = logging.getLogger(__name__)


def validation_message(errors: Sequence[dict]) -> str:
    """pydantic's error list as one line: 'field.path: what is wrong; ...'."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors)


OPENAI_PATHS = ("/v1/embeddings", "/v1/models")  # errors there take OpenAI's shape


def openai_body(status: int, code: str, message: str) -> dict:
    kind = {401: "authentication_error", 403: "permission_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500
                                          else "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    body = openai_body(status, code, message) if path in OPENAI_PATHS else {
        "error": {"code": code, "message": message}}
    return JSONResponse(body, status, headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def allowed_methods(request: Request) -> list[str]:
    """Every method that some route serves at this request's path (RFC 9110's Allow)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, e: ServiceError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.headers, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_input", validation_message(e.errors()), None,
                              request.url.path)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        headers = dict(e.headers or {})
        if e.status_code == 405:  # Starlette names only the first route's methods
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(e.status_code, _HTTP_CODES.get(e.status_code, "http_error"),
                              str(e.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        """The client left (while its body was read, or before its decode or model batch):
        counted, answered with nginx's 499, not logged as a crash."""
        request.app.state.metrics.client_gone.inc()
        return error_response(499, "client_closed_request", "client closed the connection")

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal error: {type(e).__name__}")
