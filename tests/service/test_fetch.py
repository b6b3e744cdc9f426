"""Image URLs against a real local HTTP server on 127.0.0.1 (listed explicitly, as a user must):
equal embeddings to sending the bytes, and a 400 naming the rule for everything else."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from simclr_embed.service import fetch
from simclr_embed.service.errors import BadImage
from tests.support.servers import Server, png

IMAGE = png(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))


class Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.server.server_address[1]
        routes = {
            "/cat.png": (200, "image/png", IMAGE),
            "/big.png": (200, "image/png", IMAGE * 40),
            "/page": (200, "text/html", b"<html></html>"),
            "/hop": (302, f"http://127.0.0.1:{port}/cat.png", b""),
            "/away": (302, f"http://localhost:{port}/cat.png", b""),
        }
        if self.path == "/slow.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            for byte in IMAGE[:20]:  # a drip: each read in time, the whole far too slow
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.3)
            return
        status, extra, body = routes.get(self.path, (404, "text/plain", b"no"))
        self.send_response(status)
        self.send_header("Location" if status == 302 else "Content-Type", extra)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_) -> None:
        pass


@pytest.fixture(scope="module")
def images_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def fetching(bundle_dir: Path, tmp_path_factory) -> Iterator[str]:
    srv = Server(bundle_dir, tmp_path_factory.mktemp("fetch") / "data",
                 SIMCLR_EMBED_FETCH_HOSTS="127.0.0.1", SIMCLR_EMBED_FETCH_TIMEOUT_S="1",
                 SIMCLR_EMBED_MAX_BODY_BYTES=str(4 * len(IMAGE) + 4096)).start()
    yield srv.url
    srv.stop()


def embed(url: str, images: list[str]) -> httpx.Response:
    return httpx.post(url + "/v1/embed", json={"images": images}, timeout=30)


def test_a_listed_url_embeds_like_its_bytes(fetching: str, images_url: str) -> None:
    sent = httpx.post(fetching + "/v1/embed", content=IMAGE,
                      headers={"content-type": "image/png"}).json()["embeddings"][0]
    for path in ("/cat.png", "/hop"):  # a redirect within the listed host is followed
        r = embed(fetching, [images_url + path])
        assert r.status_code == 200, r.text
        assert np.allclose(r.json()["embeddings"][0], sent, atol=1e-6)
    mixed = embed(fetching, [base64.b64encode(IMAGE).decode(), images_url + "/cat.png"])
    assert mixed.status_code == 200, mixed.text
    assert np.allclose(mixed.json()["embeddings"], [sent, sent], atol=1e-6)
    r = httpx.post(fetching + "/v1/embeddings", json={
        "model": "simclr-embed", "input": [images_url + "/cat.png"]}, timeout=30)
    assert r.status_code == 200 and np.allclose(r.json()["data"][0]["embedding"], sent,
                                                atol=1e-6)


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/away", 400, "'localhost' is not in SIMCLR_EMBED_FETCH_HOSTS"),  # the redirect's host
    ("/big.png", 413, "byte limit"),
    ("/slow.png", 400, "too slowly"),
    ("/page", 400, "text/html, not an image"),
    ("/missing.png", 400, "answered 404"),
])
def test_every_rule_refuses_with_its_reason(fetching: str, images_url: str, path: str,
                                            status: int, words: str) -> None:
    r = embed(fetching, [images_url + path])
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert r.json()["error"]["item"] == "images[0]"
    assert httpx.get(fetching + "/healthz").status_code == 200


def test_unlisted_hosts_credentials_and_default_off(fetching: str, images_url: str,
                                                    client) -> None:
    port = urlsplit(images_url).port
    r = embed(fetching, [f"http://localhost:{port}/cat.png"])
    assert r.status_code == 400 and "not in SIMCLR_EMBED_FETCH_HOSTS" in r.text
    r = embed(fetching, [f"http://user:pw@127.0.0.1:{port}/cat.png"])
    assert r.status_code == 400 and "credentials" in r.text
    r = client.post("/v1/embed", json={"images": [images_url + "/cat.png"]})  # default server
    assert r.status_code == 400 and "FETCH_HOSTS is empty" in r.text


def test_a_suffix_rule_never_reaches_private_addresses(monkeypatch) -> None:
    """Only a host listed by its exact name may resolve to a private address; `addresses` is
    replaced (a fake resolver, named as such) so that the rule is tested without DNS."""
    monkeypatch.setattr(fetch, "addresses", lambda host, port: ["10.1.2.3"])
    with pytest.raises(BadImage, match=r"resolves to 10\.1\.2\.3, a private"):
        fetch.connect(urlsplit("http://cdn.example.com/a.png"), [".example.com"], 1.0)
    assert fetch.host_rule("cdn.example.com", [".example.com"]) == "suffix"
    assert fetch.host_rule("example.com.", ["example.com"]) == "exact"
    assert fetch.host_rule("evil-example.com", [".example.com"]) is None
    assert not fetch.is_public("169.254.169.254") and not fetch.is_public("::1")
    assert fetch.is_public("93.184.216.34")
