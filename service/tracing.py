"""OpenTelemetry traces, off unless the standard variables turn them on:
`OTEL_TRACES_EXPORTER=otlp`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`
(`http/protobuf`, the default, or `grpc`), `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` (read by
the SDK). Needs the `tracing` extra.

A request is one server span (FastAPI's own, which continues the caller's W3C `traceparent`)
with child spans for receiving the body, admission, decode, queue wait, the model run and
search. A model
batch is a span of its own, linked to every request in it; each request's model span links
back to it. With tracing off, each helper here is one `is None` test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Tracer

from simclr_embed.errors import ConfigError

tracer: Tracer | None = None  # set by setup(); None: tracing is off
NULL: AbstractContextManager[None] = nullcontext()


def setup() -> bool:
    """Turns tracing on when OTEL_TRACES_EXPORTER asks for otlp; whether it did. Once per
    process (each uvicorn worker calls it from create_app)."""
    global tracer
    names = {n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if tracer is not None or "otlp" not in names \
            or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return tracer is not None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise RuntimeError("OTEL_TRACES_EXPORTER=otlp needs the tracing extra: pip install "
                           "'simclr-embed[tracing]'") from e
    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "simclr-embed")}))
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    tracer = provider.get_tracer("simclr_embed.service")
    return True


def _exporter() -> Any:
    """The OTLP exporter for the protocol asked for; it reads its endpoint, headers and
    timeout from the standard variables itself."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") \
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this service exports "
                     "http/protobuf or grpc")


def route(method: str, path: str) -> None:
    """Names the request's server span (FastAPI's own, which continues the caller's
    traceparent) by its route: FastAPI names it only where its router chose the route, and
    the hot path (service/hot_path.py) passes the router by."""
    if tracer is not None:
        server = trace.get_current_span()
        server.update_name(f"{method} {path}")
        server.set_attribute("http.route", path)


def span(name: str, attributes: Mapping[str, Any] | None = None
         ) -> AbstractContextManager[Span | None]:
    """A child of the current span."""
    if tracer is None:
        return NULL
    return tracer.start_as_current_span(name, attributes=attributes)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Attributes on the current span (the request's, where no child is open)."""
    if tracer is not None:
        trace.get_current_span().set_attributes(attributes)


def current() -> SpanContext | None:
    """The current span's context, for a batch to link to; None when tracing is off."""
    return None if tracer is None else trace.get_current_span().get_span_context()


@contextmanager
def batch_span(requests: list[SpanContext | None], attributes: Mapping[str, Any]
               ) -> Iterator[SpanContext | None]:
    """A model batch: a root span linked to each request in it."""
    if tracer is None:
        yield None
        return
    links = [Link(c) for c in requests if c is not None]
    with tracer.start_as_current_span("model batch", context=trace.set_span_in_context(
            trace.INVALID_SPAN), links=links, attributes=attributes) as s:
        yield s.get_span_context()


def queued_and_run(request: SpanContext | None, batch: SpanContext | None, enqueued_ns: int,
                   started_ns: int, ended_ns: int, attributes: Mapping[str, Any]) -> None:
    """A batched request's queue wait and model run, as children of its span; the model run
    links to the batch it shared."""
    if tracer is None or request is None:
        return
    parent = trace.set_span_in_context(trace.NonRecordingSpan(request))
    tracer.start_span("queue wait", parent, start_time=enqueued_ns).end(started_ns)
    tracer.start_span("model run", parent, start_time=started_ns, attributes=attributes,
                      links=[Link(batch)] if batch is not None else None).end(ended_ns)
