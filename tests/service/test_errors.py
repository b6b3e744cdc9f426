"""Every kind of bad input gets its 4xx with the one error shape, and the server keeps serving
correct answers afterwards; overload gets 503 + Retry-After."""

import asyncio
import base64
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from simclr_embed.service import special_cases
from simclr_embed.service.app import create_app
from simclr_embed.service.batcher import CRASH_LIMIT
from simclr_embed.service.settings import Settings
from tests.support.servers import API_KEY, Server, png, wait_for_metric

IMG = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, "PNG")  # 36 Mpx that compress to a few kB
    return buf.getvalue()


CASES = [
    ("undecodable", dict(content=b"not an image", headers={"content-type": "image/png"}),
     400, "bad_image"),
    ("empty", dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "bad_image"),
    ("bad base64", dict(json={"images": ["@@@"]}), 422, "invalid_input"),  # the schema's
    ("invalid json", dict(content=b"{", headers={"content-type": "application/json"}),
     400, "bad_request"),
    ("unsupported media", dict(content=b"x", headers={"content-type": "text/plain"}),
     415, "unsupported_media_type"),
    ("body over limit", dict(content=b"0" * (3 * 2**20), headers={"content-type": "image/png"}),
     413, "payload_too_large"),
    ("pixel bomb", dict(content=bomb(), headers={"content-type": "image/png"}),
     413, "payload_too_large"),
    ("too many images", dict(json={"images": [b64(png(IMG))] * 65}), 422, "invalid_input"),
    ("no images field", dict(json={"pictures": []}), 422, "invalid_input"),
]


@pytest.mark.parametrize(("name", "request_kw", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_embed_requests(client, name, request_kw, status, code) -> None:
    r = client.post("/v1/embed", **request_kw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    ok = client.post("/v1/embed", content=png(IMG), headers={"content-type": "image/png"})
    assert ok.status_code == 200 and len(ok.json()["embeddings"][0]) == 512


SEARCH_CASES = [
    ("k too large", {"images": [b64(png(IMG))], "k": 101}, 422),
    ("k zero", {"images": [b64(png(IMG))], "k": 0}, 422),
    ("wrong dimension", {"embeddings": [[0.1] * 511]}, 422),
    ("overflow to infinity", b'{"embeddings": [[1e400' + b", 0.1" * 511 + b"]]}", 422),
    ("NaN as Python writes it", b'{"embeddings": [[NaN' + b", 0.1" * 511 + b"]]}", 422),
    ("zero vector", {"embeddings": [[0.0] * 512]}, 422),
    ("both inputs", {"images": [b64(png(IMG))], "embeddings": [[0.1] * 512]}, 422),
    ("no images", {"images": []}, 422),  # schemathesis found a 500 here
    ("empty image", {"images": [""]}, 422),
]


@pytest.mark.parametrize(("name", "body", "status"), SEARCH_CASES, ids=[c[0] for c in SEARCH_CASES])
def test_bad_search_requests(client, name, body, status) -> None:
    if isinstance(body, bytes):  # non-finite numbers, which strict JSON cannot spell
        r = client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/search", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    good = client.post("/v1/search", json={"embeddings": [[0.1] * 512], "k": 3})
    assert good.status_code == 200 and len(good.json()["results"][0]) == 3


def test_gallery_management_needs_the_key(client) -> None:
    item = {"items": [{"id": "k1", "embedding": [0.2] * 512}]}
    assert client.post("/v1/gallery", json=item).status_code == 401
    wrong = client.post("/v1/gallery", json=item, headers={"x-api-key": "nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    assert client.delete("/v1/gallery/k1").status_code == 401
    ok = client.post("/v1/gallery", json=item, headers={"authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    gone = client.delete("/v1/gallery/k1", headers={"x-api-key": API_KEY})
    assert gone.status_code == 200
    missing = client.delete("/v1/gallery/k1", headers={"x-api-key": API_KEY})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_unknown_route_and_method_use_the_error_shape(client) -> None:
    assert client.get("/v2/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/v1/embed").json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/embed", "POST"), ("PUT", "/v1/gallery", "GET, POST"),
    ("PATCH", "/v1/gallery/x", "DELETE, GET"), ("PUT", "/v1/gallery/delete", "POST")])
def test_405_names_every_method_of_the_path(client, method, path, allow) -> None:
    r = client.request(method, path)
    assert (r.status_code, r.headers.get("allow")) == (405, allow), r.text


def test_overload_answers_503_with_retry_after(bundle_dir, tmp_path, cifar10) -> None:
    """A queue of 2 images, held full by a request waiting out a 2 s gathering window: the next
    request is refused at once with a whole 503, counted once."""
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_MAX_BATCH_SIZE="4",
                 SIMCLR_EMBED_MAX_QUEUE_IMAGES="2", SIMCLR_EMBED_MAX_IMAGES_PER_REQUEST="2",
                 SIMCLR_EMBED_MAX_WAIT_MS="2000").start()
    files = [("files", ("a.png", png(cifar10[1].images[0]), "image/png"))] * 2
    answers: list[httpx.Response] = []

    try:
        holder = threading.Thread(target=lambda: answers.append(httpx.post(
            srv.url + "/v1/embed", files=files, timeout=60)), daemon=True)
        holder.start()
        wait_for_metric(srv.url, "simclr_embed_queue_images", lambda n: n == 2)
        refused = httpx.post(srv.url + "/v1/embed", files=files, timeout=60)
        holder.join()
        codes = [answers[0].status_code, refused.status_code]
        assert codes == [200, 503], refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        after = httpx.post(srv.url + "/v1/embed", content=files[0][1][1],
                           headers={"content-type": "image/png"})
        assert after.status_code == 200
        metrics = httpx.get(srv.url + "/metrics").text
        line = next(x for x in metrics.splitlines()
                    if x.startswith("simclr_embed_rejected_overload_total "))
        assert float(line.split()[1]) == codes.count(503)  # each refusal counted once
    finally:
        srv.stop()


def test_a_model_that_keeps_crashing_answers_503_not_ready(bundle_dir, tmp_path, monkeypatch
                                                            ) -> None:
    """The one state in which a listening server is not ready: its batch loop crashed
    CRASH_LIMIT times (service/engine.py). Driven through the whole app, in process."""
    # A settled heap would stay frozen in the test process for every later test.
    monkeypatch.setattr(special_cases.CASES, "settle_heap", False)
    app = create_app(Settings(bundle=bundle_dir, data_dir=tmp_path, threads=1))
    files = [("files", ("a.png", png(IMG), "image/png"))] * 2  # two images: the batch loop

    def broken():  # the fault: every batch dies
        raise RuntimeError("broken for good")

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://app") as c:
            assert (await c.get("/readyz")).status_code == 200
            app.state.models.default.batcher._take_batch = broken
            crashed = [await c.post("/v1/embed", files=files) for _ in range(CRASH_LIMIT)]
            for _ in range(200):  # poll: the supervisor gives up right after the last crash
                if (await c.get("/readyz")).status_code == 503:
                    break
                await asyncio.sleep(0.01)
            return [*crashed, await c.get("/readyz"), await c.post("/v1/embed", files=files),
                    await c.get("/healthz")]

    *crashed, readyz, refused, healthz = asyncio.run(run())
    assert [r.status_code for r in crashed] == [500] * CRASH_LIMIT
    for r in (readyz, refused):
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert r.json()["error"]["code"] == "not_ready"
    # Not alive either: the liveness probe (deploy/kubernetes) restarts the pod.
    assert healthz.status_code == 503 and "can no longer run" in healthz.text, healthz.text


def test_failed_lone_runs_count_toward_the_crash_limit(bundle_dir, tmp_path, monkeypatch
                                                      ) -> None:
    """One image at a time runs alone on the event loop (service/engine.py); when the model
    fails there it is a model failure (500 model_failure, counted), and CRASH_LIMIT of them
    end the model's life as batch-loop crashes do: /healthz and /readyz 503."""
    monkeypatch.setattr(special_cases.CASES, "settle_heap", False)  # as above
    app = create_app(Settings(bundle=bundle_dir, data_dir=tmp_path, threads=1))
    one = [("files", ("a.png", png(IMG), "image/png"))]

    threads: list[str] = []

    def broken(batch):  # the fault: the ONNX session raises on every run
        threads.append(threading.current_thread().name)
        raise RuntimeError("the session is broken")

    async def run() -> tuple[list[httpx.Response], httpx.Response, httpx.Response, float]:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://app") as c:
            assert (await c.get("/healthz")).status_code == 200
            engine = app.state.models.default
            engine.batcher.run = broken
            failed = [await c.post("/v1/embed", files=one) for _ in range(CRASH_LIMIT)]
            crashes = engine.metrics.model_crashes._value.get()
            return failed, await c.get("/healthz"), await c.get("/readyz"), crashes

    failed, healthz, readyz, crashes = asyncio.run(run())
    assert [(r.status_code, r.json()["error"]["code"]) for r in failed] == \
        [(500, "model_failure")] * CRASH_LIMIT
    assert len(threads) == CRASH_LIMIT and not any(t.startswith("onnx") for t in threads)
    assert crashes == CRASH_LIMIT  # on the lone path, not in the model thread
    assert healthz.status_code == 503 and readyz.status_code == 503, healthz.text
