"""An OTLP/HTTP trace endpoint (POST /v1/traces, protobuf), as a collector would run one: it
answers every export at once and decodes the spans into plain records. What a traced server
costs is measured against it (`benchmarks.ab` variants with OTEL_EXPORTER_OTLP_ENDPOINT pointing
here; docs/benchmarks.md, "Tracing"), `benchmarks.serving trace` draws what it received, and the
tests check the spans a server sends (tests/service/test_tracing.py).

    python -m benchmarks.servers.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    links: list[str]  # the span ids linked to
    start_ns: int
    end_ns: int
    service: str = ""


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def decode(request: ExportTraceServiceRequest) -> list[Span]:
    got = []
    for rs in request.resource_spans:
        service = {a.key: _value(a.value) for a in rs.resource.attributes}.get("service.name")
        for ss in rs.scope_spans:
            got += [Span(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                         s.kind, {a.key: _value(a.value) for a in s.attributes},
                         [link.span_id.hex() for link in s.links], s.start_time_unix_nano,
                         s.end_time_unix_nano, service or "") for s in ss.spans]
    return got


class Receiver:
    """`with Receiver(port) as r:` listens on 127.0.0.1 (r.endpoint); with keep, r.spans are
    what arrived."""

    def __init__(self, port: int = 0, keep: bool = True) -> None:
        self.spans: list[Span] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if keep:
                    receiver._add(decode(ExportTraceServiceRequest.FromString(body)))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _add(self, spans: list[Span]) -> None:
        with self.changed:
            self.spans += spans
            self.changed.notify_all()

    def trace(self, trace_id: str, names: set[str], timeout: float = 30) -> dict[str, Span]:
        """The spans of one trace by name, once every name in `names` has arrived (the
        timeout bounds a hang only)."""
        end = time.monotonic() + timeout
        with self.changed:
            while not names <= {s.name for s in self.spans if s.trace_id == trace_id}:
                if not self.changed.wait(end - time.monotonic()):
                    raise TimeoutError(f"spans never came: {names} (have "
                                       f"{[s.name for s in self.spans]})")
            return {s.name: s for s in self.spans if s.trace_id == trace_id}

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=4318)
    with Receiver(p.parse_args().port, keep=False):
        threading.Event().wait()


if __name__ == "__main__":
    main()
