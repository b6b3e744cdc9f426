"""An OTLP/HTTP endpoint that accepts every export and keeps nothing: what a traced server
costs is measured against a collector that answers at once (`benchmarks.ab` variants with
OTEL_EXPORTER_OTLP_ENDPOINT pointing here; docs/benchmarks.md, "Tracing").

    python -m benchmarks.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=4318)
    ThreadingHTTPServer(("127.0.0.1", p.parse_args().port), Sink).serve_forever()


if __name__ == "__main__":
    main()
