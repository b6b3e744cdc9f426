"""The hot path (service/hot_path.py) answers POST /v1/embed exactly as the FastAPI route does,
embeddings and errors alike, and leaves everything else to FastAPI: real servers on real
CIFAR-10 images, one with the hot path and one without."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from simclr_embed.service import policy
from simclr_embed.service.engine import Engine
from simclr_embed.service.hot_path import HotPath
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.models import Models
from simclr_embed.service.policy import Policies
from simclr_embed.service.routes import inference
from simclr_embed.service.settings import Settings
from tests.support.servers import Server, ServiceProcess, metric, png


@pytest.fixture(scope="module")
def route_server(bundle_dir: Path, tmp_path_factory) -> Iterator[ServiceProcess]:
    """The session's `server`, but /v1/embed goes through FastAPI's route."""
    srv = Server(bundle_dir, tmp_path_factory.mktemp("route") / "data",
                 SIMCLR_EMBED_MAX_BODY_BYTES=str(2 * 2**20))
    srv.module = "simclr_embed.benchmarks.servers.variant_server --no-hot-path"
    srv.start()
    yield srv
    srv.stop()


def post(url: str, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/embed", timeout=60, **kw)


def bodies(cifar10) -> dict[str, dict]:
    """Every kind of body /v1/embed takes, on real test images."""
    imgs = [png(x) for x in cifar10[1].images[:3]]
    b64 = [base64.b64encode(b).decode() for b in imgs]
    return {
        "png": {"content": imgs[0], "headers": {"content-type": "image/png"}},
        "octet": {"content": imgs[1], "headers": {"content-type": "application/octet-stream"}},
        "multipart": {"files": [("files", (f"{i}.png", b, "image/png"))
                                for i, b in enumerate(imgs)]},
        "json": {"json": {"images": [b64[0], "data:image/png;base64," + b64[2]]}},
    }


BAD = {
    "not an image": {"content": b"no pixels here", "headers": {"content-type": "image/png"}},
    "empty": {"content": b"", "headers": {"content-type": "image/png"}},
    "truncated": None,  # filled in below from a real PNG
    "text": {"content": b"hello", "headers": {"content-type": "text/plain"}},
    "no type": {"content": b"hello"},
    "broken json": {"content": b'{"images": [', "headers": {"content-type": "application/json"}},
    "wrong field": {"json": {"image": []}},
    "bad base64": {"json": {"images": ["%%%"]}},
    "too many": {"json": {"images": ["AA=="] * 65}},
    "no files": {"data": {"a": "b"}, "files": [("other", ("x.txt", b"", "text/plain"))]},
    # Past the Gate's byte limit, refused inside each path: a 36 Mpx image in a few kB.
    "too many pixels": None,
}


def test_hot_path_answers_as_the_route(server, route_server, cifar10) -> None:
    before = httpx.get(server.url + "/metrics").text
    for name, kw in bodies(cifar10).items():
        hot, routed = post(server.url, **kw), post(route_server.url, **kw)
        assert hot.status_code == routed.status_code == 200, (name, hot.text, routed.text)
        a, b = hot.json(), routed.json()
        assert a.keys() == b.keys() and a["dimension"] == b["dimension"], name
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-5, err_msg=name)
    after = httpx.get(server.url + "/metrics").text
    ok = 'route="/v1/embed",status="200"'
    assert metric(after, "simclr_embed_requests_total", ok) - metric(
        before, "simclr_embed_requests_total", ok) == 4  # labelled as the route's requests


def test_hot_path_errors_are_the_routes(server, route_server, cifar10) -> None:
    cases = dict(BAD, truncated={"content": png(cifar10[1].images[0])[:60],
                                 "headers": {"content-type": "image/png"}},
                 **{"too many pixels": {"content": png(np.zeros((6000, 6000), np.uint8)),
                                        "headers": {"content-type": "image/png"}}})
    for name, kw in cases.items():
        hot, routed = post(server.url, **kw), post(route_server.url, **kw)
        assert 400 <= hot.status_code < 500, (name, hot.status_code, hot.text)
        assert " at 0x" not in hot.text, hot.text  # no object reprs in messages
        assert (hot.status_code, hot.json()) == (routed.status_code, routed.json()), name
    for url in (server.url, route_server.url):  # other methods still reach FastAPI
        r = httpx.get(url + "/v1/embed")
        assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_hot_path_takes_only_post_embed(bundle_dir: Path, tmp_path: Path, cifar10) -> None:
    """In process: the embed never reaches the app behind the hot path; anything else does;
    before the engine is ready the hot path answers 503 as the route's dependency would."""
    passed: list[tuple[str, str]] = []

    async def behind(scope, receive, send) -> None:  # stands in for FastAPI
        passed.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    settings = Settings(bundle=bundle_dir, data_dir=tmp_path, threads=1)
    metrics = Metrics()
    models = Models([bundle_dir], metrics, 1.0,
                    lambda d, previous: Engine(settings, metrics, bundle_dir=d, previous=previous))
    hot = HotPath(behind, models, settings)
    routes = Policies()
    routes.load(inference.router.routes)
    body = png(cifar10[1].images[0])

    async def call(method: str, path: str) -> tuple[int, bytes]:
        scope = {"type": "http", "method": method, "path": path, "query_string": b"",
                 "headers": [(b"content-type", b"image/png")]}
        scope[policy.KEY] = routes.resolve(scope)  # as the Gate in front of it would
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg: dict) -> None:
            sent.append(msg)

        await hot(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    async def run() -> list[tuple[int, bytes]]:
        loading = await call("POST", "/v1/embed")
        await models.start()
        try:
            return [loading, await call("POST", "/v1/embed"), await call("GET", "/v1/embed"),
                    await call("POST", "/v1/classify"), await call("POST", "/v1/embed/")]
        finally:
            await models.stop()

    loading, embedded, *others = asyncio.run(run())
    assert loading[0] == 503 and json.loads(loading[1])["error"]["code"] == "not_ready"
    assert embedded[0] == 200 and len(json.loads(embedded[1])["embeddings"][0]) == \
        models.default.dim
    assert [s for s, _ in others] == [204, 204, 204]
    assert passed == [("GET", "/v1/embed"), ("POST", "/v1/classify"), ("POST", "/v1/embed/")]


def test_hot_path_searches_as_the_route(server, route_server, cifar10) -> None:
    imgs = [png(x) for x in cifar10[1].images[:2]]
    vec = httpx.post(server.url + "/v1/embed", content=imgs[0],
                     headers={"content-type": "image/png"}).json()["embeddings"][0]
    good = {
        "vector": {"json": {"embeddings": [vec], "k": 3}},
        "filter": {"json": {"embeddings": [vec], "k": 2, "filter": {"label": ["cat", "dog"]}}},
        "images": {"json": {"images": [base64.b64encode(b).decode() for b in imgs]}},
        "multipart, k in the query": {"files": [("files", ("a.png", imgs[1], "image/png"))],
                                      "params": {"k": "4"}},
    }
    bad = {
        "k not a number": {"files": [("files", ("a.png", imgs[1], "image/png"))],
                           "params": {"k": "four"}},
        "k zero": {"json": {"embeddings": [vec], "k": 0}},
        "both": {"json": {"embeddings": [vec], "images": ["AA=="]}},
        "short vector": {"json": {"embeddings": [vec[:10]]}},
        "unknown field": {"json": {"embeddings": [vec], "kk": 3}},
        "unknown filter field": {"json": {"embeddings": [vec], "filter": {"colour": "red"}}},
        "too many": {"json": {"embeddings": [vec] * 65}},
    }
    found = {}
    for name, kw in {**good, **bad}.items():
        hot = httpx.post(server.url + "/v1/search", timeout=60, **kw)
        routed = httpx.post(route_server.url + "/v1/search", timeout=60, **kw)
        assert hot.status_code == routed.status_code, (name, hot.text, routed.text)
        if name in bad:
            assert 400 <= hot.status_code < 500 and hot.json() == routed.json(), name
            continue
        a, b = hot.json()["results"], routed.json()["results"]
        assert [[h["id"] for h in r] for r in a] == [[h["id"] for h in r] for r in b], name
        np.testing.assert_allclose([h["score"] for r in a for h in r],
                                   [h["score"] for r in b for h in r], atol=1e-5)
        found[name] = a
    assert [len(r) for r in found["images"]] == [10, 10]
    assert len(found["multipart, k in the query"][0]) == 4
    assert {h["label"] for h in found["filter"][0]} <= {"cat", "dog"}
    assert len(found["filter"][0]) == 2
