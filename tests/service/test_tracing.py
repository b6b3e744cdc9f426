"""OpenTelemetry traces (service/tracing.py) sent by a real server to a real OTLP/HTTP receiver
the test runs, whose protobuf it decodes: a request's server span continues the caller's
traceparent and holds its stages; requests that share a model batch link to it. On the fast
path (/v1/embed, /v1/search) and a FastAPI route (/v1/classify) alike. The same server writes
its request log as JSON lines (service/request_log.py), each carrying its trace id."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.support.servers import Receiver, Server, ServiceProcess, Span, png, wait_for_metric

IMG = png(np.random.default_rng(8).integers(0, 256, (32, 32, 3), np.uint8))
SERVER = 2  # SpanKind SERVER in OTLP's enum


@pytest.fixture(scope="module")
def traced(bundle_dir, tmp_path_factory) -> Iterator[tuple[ServiceProcess, Receiver]]:
    with Receiver() as receiver:
        # A 1.5 s gathering window: two requests queued within it share a batch.
        srv = Server(bundle_dir, tmp_path_factory.mktemp("traced") / "data",
                     OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                     OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_BSP_SCHEDULE_DELAY="20",
                     OTEL_SERVICE_NAME="embed-under-test", SIMCLR_EMBED_MAX_WAIT_MS="1500",
                     SIMCLR_EMBED_LOG_FORMAT="json").start()
        yield srv, receiver
        srv.stop()


def caller() -> tuple[str, str, dict[str, str]]:
    """A trace id and span id of the caller's, and the traceparent header carrying them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def ancestors(spans: list[Span], span: Span) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    up = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        up.append(span.span_id)
    return up


def test_a_lone_embed_is_one_server_span_under_the_callers(traced):
    srv, receiver = traced
    trace_id, parent, header = caller()
    r = httpx.post(srv.url + "/v1/embed", content=IMG,
                   headers={"content-type": "image/png", **header})
    assert r.status_code == 200, r.text
    spans = receiver.trace(trace_id, {"POST /v1/embed", "receive body", "admission", "decode",
                                      "model run"})
    server = spans["POST /v1/embed"]
    assert server.parent_id == parent and server.kind == SERVER
    assert server.service == "embed-under-test"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["model.id"] == r.json()["model"]
    assert server.attributes["model.precision"] == "int8"
    assert server.attributes["model.runtime"] == "CPUExecutionProvider"
    for name in ("receive body", "admission", "decode", "model run"):
        child = spans[name]
        assert child.parent_id == server.span_id, name
        assert server.start_ns <= child.start_ns <= child.end_ns <= server.end_ns, name
    assert spans["model run"].attributes["batch.size"] == 1
    line = logged(srv, trace_id)
    assert line["span_id"] == server.span_id and line["name"] == "simclr_embed.access"
    assert (line["method"], line["route"], line["status"]) == ("POST", "/v1/embed", 200)
    assert (line["model"], line["images"], line["batch_size"]) == (r.json()["model"], 1, 1)
    assert line["decode_ms"] > 0 and line["model_ms"] > 0 and line["queue_ms"] == 0
    assert line["duration_ms"] >= line["decode_ms"] + line["model_ms"]


def logged(srv: ServiceProcess, trace_id: str, timeout: float = 30) -> dict:
    """The request log's JSON line for a trace, once written (it follows the response)."""
    end = time.monotonic() + timeout
    while True:
        for raw in srv.log_path.read_text().splitlines():
            if raw.startswith("{") and (line := json.loads(raw)).get("trace_id") == trace_id:
                return line
        assert time.monotonic() < end, f"no log line for trace {trace_id}"
        time.sleep(0.01)


def test_requests_that_share_a_batch_link_to_it(traced):
    srv, receiver = traced
    ids = [caller() for _ in range(2)]
    body = {"images": [base64.b64encode(IMG).decode()] * 2}
    answers: list[httpx.Response] = []

    def post(header: dict[str, str]) -> None:
        answers.append(httpx.post(srv.url + "/v1/classify", json=body, headers=header,
                                  timeout=30))

    first = threading.Thread(target=post, args=(ids[0][2],))
    first.start()  # queued, and the batcher's window opens
    wait_for_metric(srv.url, "simclr_embed_queue_images", lambda n: n == 2)
    post(ids[1][2])  # queued within the window: the same batch
    first.join()
    assert [a.status_code for a in answers] == [200, 200]
    traces = [receiver.trace(t, {"POST /v1/classify", "queue wait", "model run"})
              for t, _, _ in ids]
    runs = [t["model run"] for t in traces]
    assert runs[0].links == runs[1].links and len(runs[0].links) == 1
    assert runs[0].attributes["batch.size"] == 4
    assert runs[0].attributes["batch.requests"] == 2
    batch = next(s for s in receiver.spans if s.span_id == runs[0].links[0])
    assert batch.name == "model batch" and batch.parent_id == ""
    # It links to the span that asked in each request (FastAPI's own endpoint span, under the
    # server span), where that request's queue wait and model run hang too.
    assert sorted(batch.links) == sorted(t["model run"].parent_id for t in traces)
    for t in traces:
        assert t["POST /v1/classify"].span_id in ancestors(receiver.spans, t["model run"])
        assert t["queue wait"].parent_id == t["model run"].parent_id
        assert t["queue wait"].end_ns == t["model run"].start_ns
    lines = [logged(srv, t) for t, _, _ in ids]
    assert [(x["route"], x["images"], x["batch_size"]) for x in lines] == \
        [("/v1/classify", 2, 4)] * 2
    assert lines[0]["queue_ms"] > lines[1]["queue_ms"]  # the first waited out the window


def test_a_search_span_names_its_index_and_k(traced):
    srv, receiver = traced
    trace_id, _, header = caller()
    vec = np.ones(512, np.float32).tolist()
    r = httpx.post(srv.url + "/v1/search", json={"embeddings": [vec], "k": 7}, headers=header)
    assert r.status_code == 200, r.text
    search = receiver.trace(trace_id, {"POST /v1/search", "search"})["search"]
    assert search.attributes["search.k"] == 7
    assert search.attributes["search.index"] in {"flat", "hnsw"}
