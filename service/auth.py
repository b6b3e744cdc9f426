"""Who may do what, from the request's headers alone (the Gate asks before reading a body).

Each route declares its scope (service/policy.py): `write` (gallery changes, model reloads)
needs SIMCLR_EMBED_API_KEY; `read` (listings, stored vectors, thumbnails of uploaded images)
needs the API key or SIMCLR_EMBED_READ_KEY once either READ_KEY or REQUIRE_API_KEY is set;
`key` (trading a key for the page's cookie) always needs one; `any` needs a key only under
REQUIRE_API_KEY; `open` (the probes and the page's HTML) never.

A browser's <img> cannot send a header, so the page trades the key it was given for a session
cookie (POST /v1/session): HttpOnly, SameSite=Strict, signed with a secret derived from the
configured keys (the same in every worker, void when a key changes), and good for GETs only, so
that no other site can make a browser change anything with it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from simclr_embed.service.errors import Forbidden, Unauthorized
from simclr_embed.service.policy import Scope
from simclr_embed.service.settings import Settings

COOKIE = "simclr_embed_session"
SESSION_S = 12 * 3600


def _given_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key is not None:
        return x_api_key
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <key>'")
    return token.strip()


def _matches(given: str, key) -> bool:
    return key is not None and hmac.compare_digest(given.encode(),
                                                   key.get_secret_value().encode())


def check_api_key(settings: Settings, authorization: str | None, x_api_key: str | None,
                  read_ok: bool = False) -> None:
    """401 without a usable key, 403 with a wrong one (or a read key where writing)."""
    if settings.api_key is None and not (read_ok and settings.read_key is not None):
        what = "this route needs a key" if read_ok else \
            "changes (gallery writes, model reloads) are disabled"
        raise Forbidden(f"{what}: start the server with --api-key KEY (or "
                        "SIMCLR_EMBED_API_KEY) to enable it")
    given = _given_key(authorization, x_api_key)
    if not given:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or X-API-Key")
    if _matches(given, settings.api_key) or (read_ok and _matches(given, settings.read_key)):
        return
    if _matches(given, settings.read_key):
        raise Forbidden("the read key cannot make changes: use SIMCLR_EMBED_API_KEY")
    raise Forbidden("wrong API key")


def authorize(settings: Settings, scope: Scope, method: str, headers: dict[str, str]) -> None:
    """What the route's declared scope (service/policy.py) asks of this request's headers."""
    if scope == "open":
        return
    auth, x_key = headers.get("authorization"), headers.get("x-api-key")
    if scope == "write":
        return check_api_key(settings, auth, x_key)
    reads_closed = settings.read_key is not None or settings.require_api_key
    if scope == "key" or (scope == "read" and reads_closed):
        if method in ("GET", "HEAD") and auth is None and x_key is None and \
                valid_cookie(settings, headers.get("cookie", "")):
            return
        return check_api_key(settings, auth, x_key, read_ok=True)
    if settings.require_api_key:
        check_api_key(settings, auth, x_key, read_ok=True)


def _secret(settings: Settings) -> bytes:
    keys = [k.get_secret_value() for k in (settings.api_key, settings.read_key) if k]
    return hashlib.sha256(("simclr-embed session\0" + "\0".join(keys)).encode()).digest()


def session_cookie(settings: Settings, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_S)
    sig = hmac.new(_secret(settings), str(expires).encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{sig}"


def valid_cookie(settings: Settings, header: str) -> bool:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name != COOKIE:
            continue
        expires, _, sig = value.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        want = hmac.new(_secret(settings), expires.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(sig, want)
    return False
