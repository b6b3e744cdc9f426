"""Request deadlines (service/deadline.py): a request whose X-Request-Timeout has passed is
answered 504 and its work dropped unrun, before its decode or before the model, and counted by
that stage; a bad header is a 422 naming it. In process on a real ONNX Runtime session (the
model held by a gate), and over HTTP on the fast path and FastAPI's routes alike."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time

import httpx
import numpy as np
import pytest
from starlette.requests import ClientDisconnect

from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import DeadlineExceeded
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.settings import Settings
from tests.support.gate import HeldModel
from tests.support.servers import Server, metric, png, wait_for_metric

IMG = png(np.random.default_rng(5).integers(0, 256, (32, 32, 3), np.uint8))
PNG = {"content-type": "image/png"}


def test_a_job_whose_deadline_passes_in_the_queue_is_answered_then_dropped_unrun(
        bundle_dir, tmp_path):
    async def run() -> None:
        engine = Engine(Settings(bundle=bundle_dir, data_dir=tmp_path, threads=1), Metrics())
        await engine.start()
        model = HeldModel(engine)
        images = np.zeros((2, engine.size, engine.size, 3), np.uint8)
        first = asyncio.create_task(engine.infer(images))
        await model.entered()
        with pytest.raises(DeadlineExceeded, match="x-request-timeout"):
            await engine.infer(images[:1], time.monotonic() + 0.05)
        assert not model.is_open  # answered at its deadline, the model still busy
        model.open()
        emb, _ = await first
        later = await engine.infer(images[:1])  # runs after the loop took and dropped the job
        assert emb.shape == (2, engine.dim) and later[0].shape == (1, engine.dim)
        reg = engine.metrics.registry
        assert reg.get_sample_value("simclr_embed_deadline_dropped_total", {"stage": "model"}) == 1
        assert reg.get_sample_value("simclr_embed_batch_size_count",
                                    {"model": engine.model_id}) == 2  # first, later: not it
        await engine.stop()

    asyncio.run(run())


def drops(client: httpx.Client, stage: str) -> float:
    return metric(client.get("/metrics").text, "simclr_embed_deadline_dropped_total",
                  f'stage="{stage}"')


@pytest.mark.parametrize("route", ["/v1/embed", "/v1/classify"])  # fast path, FastAPI route
def test_a_request_past_its_deadline_is_dropped_before_its_decode(client, route):
    text = client.get("/metrics").text
    before = [drops(client, "decode"), metric(text, "simclr_embed_decode_seconds_count"),
              metric(text, "simclr_embed_batch_size_count")]
    r = client.post(route, content=IMG, headers={**PNG, "x-request-timeout": "0.000001"})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    text = client.get("/metrics").text
    after = [drops(client, "decode"), metric(text, "simclr_embed_decode_seconds_count"),
             metric(text, "simclr_embed_batch_size_count")]
    assert after == [before[0] + 1, before[1], before[2]]  # no decode, no model run
    ok = client.post(route, content=IMG, headers={**PNG, "x-request-timeout": "30"})
    assert ok.status_code == 200, ok.text
    assert metric(client.get("/metrics").text, "simclr_embed_decode_seconds_count") \
        == before[1] + 1


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf", ""])
def test_a_bad_deadline_is_refused_by_name(client, value):
    r = client.post("/v1/embed", content=IMG, headers={**PNG, "x-request-timeout": value})
    assert r.status_code == 422, r.text
    assert "x-request-timeout" in r.json()["error"]["message"]


def test_a_deadline_past_model_timeout_is_capped_by_it(client):
    r = client.post("/v1/embed", content=IMG, headers={**PNG, "x-request-timeout": "1e9"})
    assert r.status_code == 200, r.text


def test_openai_routes_answer_a_passed_deadline_in_openais_shape(client):
    model = client.get("/v1/models").json()["data"][0]["id"]
    body = {"input": base64.b64encode(IMG).decode(), "model": model}
    r = client.post("/v1/embeddings", json=body, headers={"x-request-timeout": "0.000001"})
    assert r.status_code == 504, r.text
    assert r.json()["error"] | {"message": ""} == {
        "message": "", "type": "api_error", "param": "x-request-timeout",
        "code": "deadline_exceeded"}


def test_a_queued_job_whose_client_left_frees_its_place(bundle_dir, tmp_path):
    """The model held by a gate; a job queued behind it whose caller leaves is answered at once
    and never runs: the next batch holds only the job queued after it."""
    async def run() -> None:
        engine = Engine(Settings(bundle=bundle_dir, data_dir=tmp_path, threads=1), Metrics())
        await engine.start()
        model = HeldModel(engine)
        images = np.zeros((3, engine.size, engine.size, 3), np.uint8)
        first = asyncio.create_task(engine.infer(images[:2]))
        await model.entered()
        left = asyncio.Event()  # the client's disconnect
        leaving = asyncio.create_task(engine.infer(images, None, left.wait))
        staying = asyncio.create_task(engine.infer(images[:1]))
        while engine.pending < 4:
            await asyncio.sleep(0)
        left.set()
        with pytest.raises(ClientDisconnect):
            await leaving
        model.open()
        await asyncio.gather(first, staying)
        assert model.sizes == [2, 1]  # the 3 images of the one that left never ran
        await engine.stop()

    asyncio.run(run())


def test_over_http_a_client_that_leaves_while_queued_costs_no_model_time(bundle_dir,
                                                                          tmp_path):
    """A 2 s gathering window holds the queue: a client that sends a 2-image request and
    closes its socket is counted as gone, and the batch that runs holds only the images of the
    request that stayed."""
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_MAX_WAIT_MS="2000").start()
    try:
        text = httpx.get(srv.url + "/metrics").text
        gone, ran = (metric(text, "simclr_embed_client_gone_total"),
                     metric(text, "simclr_embed_batch_size_sum"))
        body = json.dumps({"images": [base64.b64encode(IMG).decode()] * 2}).encode()
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\ncontent-type: application/json"
                      b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for_metric(srv.url, "simclr_embed_client_gone_total", lambda n: n == gone + 1)
        r = httpx.post(srv.url + "/v1/embed", json={"images": [base64.b64encode(IMG).decode()]
                                                    * 3}, timeout=30)
        assert r.status_code == 200, r.text
        after = metric(httpx.get(srv.url + "/metrics").text, "simclr_embed_batch_size_sum")
        assert after - ran == 3  # the 2 images of the client that left never ran
    finally:
        srv.stop()
