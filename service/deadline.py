"""Request deadlines: a client says how long it will wait (`X-Request-Timeout: 0.25`, in
seconds, counted from when its headers arrive), and the work of a request past its deadline is
dropped before it costs a decode or a place in a model batch, as Triton's queue policy and
gRPC deadlines do. The client gets 504 `deadline_exceeded` (if it still listens), and
`simclr_embed_deadline_dropped{stage}` counts each drop by where it happened. The wait for the
model stays capped by MODEL_TIMEOUT_S (503 past it), which is also the only limit of a request
without the header."""

from __future__ import annotations

import math
import time

from starlette.requests import Request

from simclr_embed.service.errors import DeadlineExceeded, InvalidInput
from simclr_embed.service.metrics import Metrics, ModelMetrics

HEADER = "x-request-timeout"
KEY = "simclr_embed.deadline"  # the scope's key: the time.monotonic() it runs out at


def parse(headers: dict[str, str]) -> float | None:
    """The deadline the headers ask for, on time.monotonic()'s clock (uvloop's loop.time() stands
    still within one turn of the loop, where a whole fast-path request runs); None without
    the header."""
    raw = headers.get(HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # NaN fails too
        raise InvalidInput(f"{HEADER} must be a positive number of seconds, got {raw[:40]!r}",
                           param=HEADER)
    return time.monotonic() + seconds


def of(request: Request) -> float | None:
    return request.scope.get(KEY)


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def exceeded(metrics: Metrics | ModelMetrics, stage: str) -> DeadlineExceeded:
    """Counts a drop at `stage`; the error to answer with."""
    metrics.deadline_dropped.labels(stage).inc()
    return DeadlineExceeded(f"the request's {HEADER} passed before its {stage} work; dropped "
                            "unrun", param=HEADER)


def check(request: Request, metrics: Metrics | ModelMetrics, stage: str) -> None:
    if expired(of(request)):
        raise exceeded(metrics, stage)
