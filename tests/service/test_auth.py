"""Least privilege for reads, over real HTTP: with SIMCLR_EMBED_READ_KEY, listings, stored
vectors and thumbnails need a key; the read key cannot write; the page's session cookie lets an
<img> load thumbnails, for GETs only."""

from __future__ import annotations

import httpx
import numpy as np

from tests.support.servers import API_KEY, Server, png

READ = "read-only-key"


def test_reads_need_the_read_key_which_cannot_write(bundle_dir, tmp_path):
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_READ_KEY=READ).start()
    item = {"items": [{"id": "mine/1", "embedding": [0.1] * 512}]}
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.post("/v1/gallery", json=item, headers={"x-api-key": API_KEY}
                          ).status_code == 200
            bundle_id = c.get("/v1/gallery?limit=1", headers={"x-api-key": READ}
                              ).json()["items"][0]["id"]
            for path in ("/v1/gallery", "/v1/gallery/mine/1", f"/v1/thumbnails/{bundle_id}"):
                assert c.get(path).status_code == 401, path
                assert c.get(path, headers={"x-api-key": "wrong"}).status_code == 403, path
                assert c.get(path, headers={"x-api-key": READ}).status_code == 200, path
                assert c.get(path, headers={"x-api-key": API_KEY}).status_code == 200, path
            r = c.post("/v1/gallery", json=item, headers={"x-api-key": READ})
            assert r.status_code == 403 and "read key" in r.json()["error"]["message"]
            assert c.delete("/v1/gallery/mine/1", headers={"x-api-key": READ}
                            ).status_code == 403
            img = png(np.zeros((32, 32, 3), np.uint8))  # inference stays open
            assert c.post("/v1/embed", content=img, headers={"content-type": "image/png"}
                          ).status_code == 200
    finally:
        srv.stop()


def test_the_session_cookie_opens_gets_only(bundle_dir, tmp_path):
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_REQUIRE_API_KEY="true").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.post("/v1/session").status_code == 401
            r = c.post("/v1/session", headers={"x-api-key": API_KEY})
            assert r.status_code == 204
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
            listing = c.get("/v1/gallery?limit=1")  # the jar sends the cookie
            assert listing.status_code == 200
            thumb = c.get("/v1/thumbnails/" + listing.json()["items"][0]["id"])
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
            item = {"items": [{"id": "x", "embedding": [0.1] * 512}]}
            assert c.post("/v1/gallery", json=item).status_code == 401  # not for writes
            assert c.delete("/v1/gallery/x").status_code == 401
        forged = {"cookie": "simclr_embed_session=99999999999.deadbeef"}
        assert httpx.get(srv.url + "/v1/gallery", headers=forged).status_code == 401
        assert httpx.get(srv.url + "/").status_code == 200  # the page itself is open
    finally:
        srv.stop()


def test_a_session_cookie_past_its_time_or_from_other_keys_is_refused() -> None:
    """Signed cookies expire (SESSION_S after they were made) and die with the keys that
    signed them: a rotated API key ends every session."""
    import time

    from pydantic import SecretStr

    from simclr_embed.service.auth import COOKIE, SESSION_S, session_cookie, valid_cookie
    from simclr_embed.service.settings import Settings

    settings = Settings(api_key=SecretStr("k1"))
    fresh = session_cookie(settings)
    expired = session_cookie(settings, now=time.time() - SESSION_S - 1)
    assert valid_cookie(settings, f"other=1; {COOKIE}={fresh}")
    assert not valid_cookie(settings, f"{COOKIE}={expired}")
    assert not valid_cookie(Settings(api_key=SecretStr("k2")), f"{COOKIE}={fresh}")
    forged_time = fresh.replace(fresh.split(".")[0], str(int(fresh.split(".")[0]) + 3600))
    assert not valid_cookie(settings, f"{COOKIE}={forged_time}")  # a later time, same signature
