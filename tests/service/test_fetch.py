"""Image URLs against a real local HTTP server on 127.0.0.1 (listed explicitly, as a user must):
equal embeddings to sending the bytes, and a 400 naming the rule for everything else."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest

from simclr_embed.service import fetch
from simclr_embed.service.errors import BadImage, FetchFailed
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
            "/loop": (302, f"http://127.0.0.1:{port}/loop", b""),
            "/ftp": (302, f"ftp://127.0.0.1:{port}/cat.png", b""),
            "/file": (302, "file:///etc/passwd", b""),
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
    ("/loop", 400, "redirected more than 3 times"),
    ("/ftp", 400, "must be http or https, not 'ftp'"),
    ("/file", 400, "must be http or https, not 'file'"),
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
    with pytest.raises(BadImage, match=r"resolves to 10\.1\.2\.3, not a globally reachable"):
        fetch.connect(urlsplit("http://cdn.example.com/a.png"), [".example.com"], 1.0)
    assert fetch.host_rule("cdn.example.com", [".example.com"]) == "suffix"
    assert fetch.host_rule("example.com.", ["example.com"]) == "exact"
    assert fetch.host_rule("evil-example.com", [".example.com"]) is None
    assert not fetch.is_public("169.254.169.254") and not fetch.is_public("::1")
    assert fetch.is_public("93.184.216.34")


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_listed_host_is_a_502_naming_host_and_cause(fetching: str) -> None:
    r = embed(fetching, [f"http://127.0.0.1:{closed_port()}/x.png"])
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "fetch_failed" and error["item"] == "images[0]"
    assert "127.0.0.1" in error["message"] and "connection refused" in error["message"]
    assert httpx.get(fetching + "/healthz").status_code == 200


def test_each_cause_is_named_and_no_socket_leaks(images_url: str) -> None:
    """Refused, TLS (https to a plain HTTP server), timeout (a listener that never answers)
    and DNS, each 100 times for the first two: no socket of this process is left connected to
    any of those ports. (Counting all descriptors is not enough: the image server's threads in
    this same process close their ends when they get to it.)"""
    port = urlsplit(images_url).port
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes the handshake; nobody ever answers
    refused, quiet = closed_port(), silent.getsockname()[1]
    cases = [(f"http://127.0.0.1:{refused}/x.png", "connection refused", 100),
             (f"https://127.0.0.1:{port}/cat.png", "TLS failed", 100),
             (f"http://127.0.0.1:{quiet}/x.png", "timed out", 2),
             ("http://nowhere.invalid/x.png", "DNS lookup failed", 2)]
    rules = ["127.0.0.1", "nowhere.invalid"]
    for url, words, times in cases:
        for _ in range(times):
            with pytest.raises(FetchFailed, match=words):
                fetch.fetch_image(url, rules, 1 << 20, timeout=0.2)
    left = [c for c in psutil.Process().net_connections("inet")
            if c.raddr and c.raddr.port in (refused, port, quiet)
            and c.laddr.port not in (port, quiet)]  # the servers' ends are theirs to close
    silent.close()
    assert left == []


@pytest.mark.parametrize("ip", [
    "100.100.100.200", "100.64.0.1", "192.0.0.1", "198.18.0.1", "10.1.2.3", "172.16.0.1",
    "192.168.1.1", "127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "240.0.0.1",
    "255.255.255.255", "192.0.2.1", "::1", "fc00::1", "fe80::1", "ff02::1", "::ffff:10.0.0.1",
    "::ffff:100.100.100.200", "2001:db8::1"])
def test_special_addresses_are_not_public(ip: str) -> None:
    assert not fetch.is_public(ip)


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_global_addresses_are_public(ip: str) -> None:
    assert fetch.is_public(ip)
