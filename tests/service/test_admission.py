"""The front door over real HTTP: admission before the body is read, slow bodies, clients that
leave, the API key on every route, what /metrics and /v1/model reveal, and 500s in the metrics.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import httpx
import numpy as np
from PIL import Image

from simclr_embed.service.admission import Gate, Inflight
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.policy import Policies
from simclr_embed.service.settings import Settings
from tests.support.servers import API_KEY, Server, metric, png, wait_for_metric

IMG = png(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))


def open_body(port: int, length: int, sent: bytes = b"x") -> socket.socket:
    """A POST whose headers promise `length` body bytes, of which only `sent` arrive."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
              b"content-length: %d\r\n\r\n" % length + sent)
    return s


def read_status(s: socket.socket, timeout: float) -> int:
    s.settimeout(timeout)
    head = s.recv(4096)
    return int(head.split()[1])


def test_slow_bodies_time_out_with_408_and_the_server_keeps_serving(bundle_dir, tmp_path):
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_BODY_TIMEOUT_S="1").start()
    try:
        socks = [open_body(srv.port, 1000) for _ in range(20)]  # dribblers that never finish
        codes = [read_status(s, 5) for s in socks]  # all time out at once, after 1 s
        assert codes == [408] * 20
        ok = httpx.post(srv.url + "/v1/embed", content=IMG, headers={"content-type": "image/png"})
        assert ok.status_code == 200
    finally:
        for s in socks:
            s.close()
        srv.stop()


def test_slow_bodies_hold_no_slot_and_full_slots_refuse_with_a_whole_503(bundle_dir, tmp_path):
    """Slots are taken once a body has arrived: two bodies that never end leave the only slot
    free; a heavy request decoding in it fills it, and the two sent meanwhile get a complete
    503 at once."""
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_MAX_INFLIGHT_REQUESTS="1",
                 SIMCLR_EMBED_BODY_TIMEOUT_S="30").start()
    held = [open_body(srv.port, 5000) for _ in range(2)]
    try:
        r = httpx.post(srv.url + "/v1/embed", content=IMG, headers={"content-type": "image/png"})
        assert r.status_code == 200
        heavy, answers = big_png(), []

        def post() -> httpx.Response:
            return httpx.post(srv.url + "/v1/embed", content=heavy, timeout=60,
                              headers={"content-type": "image/png"})

        holder = threading.Thread(target=lambda: answers.append(post()), daemon=True)
        holder.start()  # it holds the only slot while its image decodes
        wait_for_metric(srv.url, "simclr_embed_decode_images", lambda n: n >= 1)
        refused = [post(), post()]
        holder.join()
        assert answers[0].status_code == 200, answers[0].text
        for a in refused:
            assert a.status_code == 503, a.text
            assert a.headers["retry-after"] == "1" and a.json()["error"]["code"] == "overloaded"
        assert httpx.get(srv.url + "/healthz").status_code == 200  # GETs are not admitted
        m = httpx.get(srv.url + "/metrics").text
        assert metric(m, "simclr_embed_rejected_overload_total") == len(refused)
    finally:
        for s in held:
            s.close()
        srv.stop()


def big_png(side: int = 2500) -> bytes:
    """A photo-like PNG that takes a noticeable time to decode."""
    x = np.random.default_rng(2).integers(0, 256, (side // 8, side // 8, 3), np.uint8)
    return png(np.asarray(Image.fromarray(x).resize((side, side), Image.BICUBIC)))


def test_requests_of_clients_that_left_are_dropped_before_decode(bundle_dir, tmp_path):
    """Twenty clients leave while one heavy decode holds the only decode slot: ten before their
    body was read, ten after it (dropped when their turn for the slot comes). None is decoded or
    batched, and none leaves a traceback."""
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_DECODE_THREADS="1").start()
    try:
        heavy = big_png()
        before = httpx.get(srv.url + "/metrics").text
        blocker = threading.Thread(target=httpx.post, args=(srv.url + "/v1/embed",),
                                   kwargs={"content": heavy, "timeout": 60,
                                           "headers": {"content-type": "image/png"}})
        blocker.start()
        decoding = "simclr_embed_decode_images"  # in the pool or waiting for a decode slot
        wait_for_metric(srv.url, decoding, lambda n: n >= 1)  # the heavy decode holds the slot
        early = [open_body(srv.port, len(IMG), IMG) for _ in range(10)]
        for s in early:
            s.close()
        late = [open_body(srv.port, len(IMG), IMG) for _ in range(10)]
        wait_for_metric(srv.url, decoding, lambda n: n >= 11)  # the late ones wait for the slot
        for s in late:
            s.close()
        blocker.join()
        gone = wait_for_metric(srv.url, "simclr_embed_client_gone_total", lambda n: n >= 20)
        after = httpx.get(srv.url + "/metrics").text
        batches = (metric(after, "simclr_embed_batch_size_count")
                   - metric(before, "simclr_embed_batch_size_count"))
        assert gone == 20 and batches == 1, (gone, batches)
        assert metric(after, "simclr_embed_requests_total",
                      'route="/v1/embed",status="499"') == 20
        assert "Traceback" not in srv.log_path.read_text()
    finally:
        srv.stop()


def test_api_key_on_every_route_but_the_probes(bundle_dir, tmp_path):
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_REQUIRE_API_KEY="true").start()
    post = dict(content=IMG, headers={"content-type": "image/png"})
    try:
        for path in ("/healthz", "/readyz"):
            assert httpx.get(srv.url + path).status_code == 200
        for path in ("/metrics", "/v1/model", "/docs", "/openapi.json", "/v1/gallery"):
            r = httpx.get(srv.url + path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert httpx.post(srv.url + "/v1/embed", **post).status_code == 401
        bare = {"authorization": API_KEY, "content-type": "image/png"}  # no scheme
        r = httpx.post(srv.url + "/v1/embed", content=IMG, headers=bare)
        assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
        for scheme in ("Bearer", "bearer", "BEARER"):
            h = {"authorization": f"{scheme} {API_KEY}", "content-type": "image/png"}
            assert httpx.post(srv.url + "/v1/embed", content=IMG, headers=h).status_code == 200
        wrong = {"authorization": "Bearer nope", "content-type": "image/png"}
        assert httpx.post(srv.url + "/v1/embed", content=IMG, headers=wrong).status_code == 403
        assert httpx.get(srv.url + "/metrics", headers={"x-api-key": API_KEY}).status_code == 200
    finally:
        srv.stop()


def test_empty_key_means_disabled_with_a_startup_line(bundle_dir, tmp_path):
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_API_KEY="").start()
    try:
        item = {"items": [{"id": "a", "embedding": [0.1] * 512}]}
        r = httpx.post(srv.url + "/v1/gallery", json=item, headers={"x-api-key": ""})
        assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]
        assert "no API key" in srv.log_path.read_text()
    finally:
        srv.stop()


def test_required_key_without_a_key_refuses_to_start(bundle_dir, tmp_path):
    env = {"SIMCLR_EMBED_REQUIRE_API_KEY": "true", "SIMCLR_EMBED_API_KEY": ""}
    r = run_serve([str(bundle_dir)], env)
    assert r.returncode == 2 and "SIMCLR_EMBED_API_KEY is empty" in r.stderr


def run_serve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "simclr_embed.cli", "serve", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_failed_start_exits_non_zero_with_several_workers(tmp_path):
    r = run_serve([str(tmp_path / "no-bundle"), "--workers", "2", "--port", "0"], {})
    assert r.returncode == 2 and "no-bundle" in r.stderr


def test_model_and_metrics_reveal_no_paths_or_history(client, bundle_dir):
    model = client.get("/v1/model").text
    metrics = client.get("/metrics").text
    for text in (model, metrics):
        assert str(bundle_dir) not in text and str(bundle_dir.parent) not in text
    assert "probe_history" not in model and "config" not in client.get("/v1/model").json()
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert (client.get("/v1/model").json()["checkpoint"]["eval"]["linear_top1"]
            == manifest["checkpoint"]["eval"]["linear_top1"])


def test_500s_reach_the_metrics() -> None:
    """A small fake app (it raises) behind the real middleware: the request is still counted."""
    metrics = Metrics()

    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    gate = Gate(broken, Settings(), metrics, Inflight(), queued_images=lambda: 0,
                policies=Policies())  # no routes: every request unmatched
    transport = httpx.ASGITransport(app=gate, raise_app_exceptions=False)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/v1/model")

    import asyncio

    assert asyncio.run(call()).status_code == 500
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert metric(text, "simclr_embed_requests_total", 'route="unmatched",status="500"') == 1
