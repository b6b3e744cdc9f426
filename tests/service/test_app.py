"""The service over real HTTP: correct answers, batching without mix-ups, metrics, OpenAPI."""

import asyncio
import base64
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import make_session, run_batches
from simclr_embed.training.data import stratified_subset
from tests.support.servers import png


@pytest.fixture(scope="module")
def test_images(cifar10) -> np.ndarray:
    return stratified_subset(cifar10[1], 3, seed=5).images  # (30, 32, 32, 3) real test images


@pytest.fixture(scope="module")
def served(bundle_dir, client):
    """In process, the INT8 encoder on the runtime the server chose (provider=auto)."""
    provider = client.get("/v1/model").json()["provider"]
    return make_session(load_bundle(bundle_dir).encoder_path("int8"), 0,
                        "openvino" if provider == "OpenVINO-CPU" else "cpu")


@pytest.fixture(scope="module")
def reference(served, test_images):
    """What HTTP must reproduce."""
    return run_batches(served, test_images, 1)


def test_embed_over_http_equals_in_process_onnx(client, test_images, reference) -> None:
    r = client.post("/v1/embed", files=[("files", (f"{i}.png", png(x), "image/png"))
                                        for i, x in enumerate(test_images[:8])])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimension"] == 512 and body["precision"] == "int8"
    np.testing.assert_allclose(np.array(body["embeddings"]), reference[0][:8], atol=1e-5)
    raw = client.post("/v1/embed", content=png(test_images[9]),
                      headers={"content-type": "image/png"})
    np.testing.assert_allclose(raw.json()["embeddings"][0], reference[0][9], atol=1e-5)
    data_url = "data:image/png;base64," + base64.b64encode(png(test_images[10])).decode()
    js = client.post("/v1/embed", json={"images": [data_url]})
    np.testing.assert_allclose(js.json()["embeddings"][0], reference[0][10], atol=1e-5)


def test_gallery_image_finds_itself_first(client, bundle_dir, cifar10) -> None:
    gallery = stratified_subset(cifar10[0], 20, seed=0)  # the export's gallery
    ids = load_bundle(bundle_dir).gallery("int8")[0]
    for n in (0, 57, 199):
        r = client.post("/v1/search", params={"k": 3}, content=png(gallery.images[n]),
                        headers={"content-type": "image/png"})
        top = r.json()["results"][0]
        assert top[0]["id"] == ids[n] and top[0]["score"] > 0.999
        assert top[0]["label"] == gallery.classes[gallery.labels[n]]
        assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]


def test_search_by_embedding_matches_search_by_image(client, test_images, reference) -> None:
    """The same query as an image and as its in-process embedding: the same neighbours."""
    for n in (0, 7):
        by_vec = client.post("/v1/search",
                             json={"embeddings": [reference[0][n].tolist()], "k": 5})
        b64 = base64.b64encode(png(test_images[n])).decode()
        by_img = client.post("/v1/search", json={"images": [b64], "k": 5})
        vec_hits, img_hits = by_vec.json()["results"][0], by_img.json()["results"][0]
        assert len(vec_hits) == 5
        assert [h["id"] for h in vec_hits] == [h["id"] for h in img_hits]
        np.testing.assert_allclose([h["score"] for h in vec_hits],
                                   [h["score"] for h in img_hits], atol=1e-4)


def test_classify_agrees_with_the_head(client, test_images, reference) -> None:
    b64 = [base64.b64encode(png(x)).decode() for x in test_images[:6]]
    r = client.post("/v1/classify", json={"images": b64, "k": 10})
    logits = reference[1][:6]
    for row, lg in zip(r.json()["results"], logits, strict=True):
        p = np.exp(lg - lg.max()) / np.exp(lg - lg.max()).sum()
        assert row[0]["index"] == int(lg.argmax())
        np.testing.assert_allclose([c["probability"] for c in row], np.sort(p)[::-1], atol=1e-5)


def test_concurrent_clients_each_get_their_own_result(server, test_images, reference) -> None:
    async def one(c: httpx.AsyncClient, idx: list[int]) -> tuple[list[int], np.ndarray]:
        files = [("files", (f"{i}.png", png(test_images[i]), "image/png")) for i in idx]
        r = await c.post("/v1/embed", files=files)
        assert r.status_code == 200, r.text
        return idx, np.array(r.json()["embeddings"])

    async def main() -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            jobs = [[i % 30, (i * 7) % 30][: 1 + i % 2] for i in range(48)]
            return await asyncio.gather(*(one(c, j) for j in jobs))

    for idx, emb in asyncio.run(main()):
        np.testing.assert_allclose(emb, reference[0][idx], atol=1e-5)


def test_metrics_move(client, test_images) -> None:
    def scrape() -> dict[str, float]:
        out = {}
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("simclr_embed_") and " " in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    before = scrape()
    client.post("/v1/embed", content=png(test_images[0]), headers={"content-type": "image/png"})
    after = scrape()
    key = 'simclr_embed_requests_total{route="/v1/embed",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    model = f'model="{client.get("/v1/models").json()["data"][0]["id"]}"'
    for name in ("simclr_embed_batch_size_count", "simclr_embed_inference_seconds_count"):
        assert after[f"{name}{{{model}}}"] > before[f"{name}{{{model}}}"]
    assert after[f"simclr_embed_gallery_size{{{model}}}"] >= 200
    assert 'simclr_embed_request_latency_seconds_bucket{le="0.005",route="/v1/embed"}' in after
    assert any(k.startswith("simclr_embed_model_info{") for k in after)


def test_ops_endpoints_and_openapi(client, bundle_dir) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    model = client.get("/v1/model").json()
    assert model["classes"][3] == "cat" and model["embedding_dim"] == 512
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert model["metrics"] == manifest["metrics"]  # the export's own scores, as measured
    spec = client.get("/openapi.json").json()
    for path in ("/v1/embed", "/v1/search", "/v1/classify", "/v1/gallery", "/v1/model"):
        assert path in spec["paths"]
    content = spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "image/*"} <= set(content)
    assert content["application/json"]["schema"]["properties"]["images"]["examples"]


def test_service_never_imports_torch() -> None:
    code = ("import sys\nfrom simclr_embed.service import app, engine, gallery, bundle, "
            "preprocess\nfrom simclr_embed import cli\ncli.build_app('serve')\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(("fmt", "size"), [("JPEG", (640, 480)), ("WEBP", (50, 90)),
                                          ("PNG", (32, 32)), ("GIF", (100, 100))])
def test_any_size_and_common_formats(client, served, test_images, fmt, size) -> None:
    """Decoded, converted to RGB and framed by the same resize the training decoder uses."""
    from PIL import Image

    from simclr_embed.service.preprocess import to_square_rgb

    buf = io.BytesIO()
    Image.fromarray(test_images[4]).resize(size).save(buf, fmt)
    r = client.post("/v1/embed", files=[("files", (f"x.{fmt.lower()}", buf.getvalue()))])
    assert r.status_code == 200, r.text
    expected = to_square_rgb(Image.open(io.BytesIO(buf.getvalue())), 32)[None]
    ref, _ = run_batches(served, expected)
    np.testing.assert_allclose(r.json()["embeddings"][0], ref[0], atol=1e-5)
