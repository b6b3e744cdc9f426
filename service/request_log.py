"""One log line per request (logger `simclr_embed.access`, SIMCLR_EMBED_ACCESS_LOG): method,
route, status, time, and what the stages noted on the way (model, images, decode, queue wait
and model time), with the trace and span ids when tracing is on (service/tracing.py), so that
a line leads to its trace. SIMCLR_EMBED_LOG_FORMAT=json writes each line as one JSON object
(python-json-logger) with those fields as keys; `serve --log-config FILE` takes uvicorn's
standard logging config instead, whose formatters may use the same fields.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace

log = logging.getLogger("simclr_embed.access")
_notes: ContextVar[dict[str, Any] | None] = ContextVar("simclr_embed_request_notes",
                                                       default=None)


def begin() -> dict[str, Any]:
    """The request's notes, which the stages below fill in (the Gate calls this)."""
    notes: dict[str, Any] = {}
    _notes.set(notes)
    return notes


def current() -> dict[str, Any] | None:
    """The notes of the request being served here, for work done elsewhere (a model batch)."""
    return _notes.get()


def note(**fields: Any) -> None:
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)


def emit(method: str, route: str, status: int, start: float, notes: dict[str, Any]) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    ms = round((time.perf_counter() - start) * 1000, 3)
    fields = {"method": method, "route": route, "status": status, "duration_ms": ms, **notes}
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        fields |= {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
    log.info("%s %s %d %.1f ms%s", method, route, status, ms,
             "".join(f" {k}={v}" for k, v in notes.items()), extra=fields)
