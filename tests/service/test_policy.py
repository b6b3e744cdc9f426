"""Each route's policy is declared where the route is (service/policy.py): every route of
create_app is checked against the table below, so a new route must be named here with its
scope, and a route that declares none stops the app from starting."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from simclr_embed.service.app import create_app
from simclr_embed.service.policy import Policies, UndeclaredPolicy, leaf_routes
from simclr_embed.service.settings import Settings

# (method, path): (scope, body, OpenAI error shape, fast path)
EXPECTED = {
    ("GET", "/healthz"): ("open", "images", False, False),
    ("GET", "/readyz"): ("open", "images", False, False),
    ("GET", "/"): ("open", "images", False, False),
    ("GET", "/metrics"): ("any", "images", False, False),
    ("GET", "/v1/model"): ("any", "images", False, False),
    ("POST", "/v1/models/reload"): ("write", "images", False, False),
    ("POST", "/v1/embed"): ("any", "images", False, True),
    ("POST", "/v1/search"): ("any", "images", False, True),
    ("POST", "/v1/classify"): ("any", "images", False, False),
    ("GET", "/v1/gallery"): ("read", "images", False, False),
    ("GET", "/v1/gallery/map"): ("read", "images", False, False),
    ("POST", "/v1/gallery/duplicates"): ("read", "ids", False, False),
    ("GET", "/v1/gallery/{item_id:path}"): ("read", "images", False, False),
    ("POST", "/v1/gallery"): ("write", "images", False, False),
    ("DELETE", "/v1/gallery/{item_id:path}"): ("write", "images", False, False),
    ("POST", "/v1/gallery/delete"): ("write", "ids", False, False),
    ("GET", "/v1/thumbnails/{item_id:path}"): ("read", "images", False, False),
    ("POST", "/v1/session"): ("key", "images", False, False),
    ("POST", "/v1/embeddings"): ("any", "images", True, False),
    ("GET", "/v1/models"): ("any", "images", True, False),
}


@pytest.fixture(scope="module")
def app(bundle_dir: Path):
    return create_app(Settings(bundle=bundle_dir, api_key="k"))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "cat/1", path)


def test_every_route_has_the_declared_policy(app) -> None:
    policies = Policies()
    policies.load(app.routes)
    seen = {}
    for route in leaf_routes(app.routes):
        for method in getattr(route, "methods", None) or ():
            if (method, route.path) not in EXPECTED:  # FastAPI's own documentation routes
                assert route.endpoint.__module__.split(".")[0] in ("fastapi", "fastapi_offline")
                continue
            found, rules = policies.resolve({"type": "http", "method": method, "root_path": "",
                                             "path": concrete(route.path)})
            assert found is route, (method, route.path)
            seen[method, route.path] = (rules.scope, rules.body, rules.openai_errors,
                                        rules.fast is not None)
    assert seen == EXPECTED


def test_a_route_without_a_policy_stops_the_app_from_starting(app) -> None:
    """The route the issue feared: gallery writes behind a path no table knew."""
    bare = create_app(app.state.settings)

    @bare.post("/v1/gallery/import")
    async def gallery_import() -> dict:
        return {}

    with (pytest.raises(UndeclaredPolicy, match=r"POST /v1/gallery/import \(.*gallery_import\)"),
          TestClient(bare)):
        pass


def test_a_405_takes_the_paths_key_and_error_shape(server) -> None:
    """A method a path does not take is answered in the shape of the route at that path."""
    r = httpx.get(server.url + "/v1/embeddings")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error", r.text
    r = httpx.put(server.url + "/v1/embed")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
