"""Each route's policy, declared where the route is declared (`@policy(...)` under the
router's decorator): who may call it, how large a body it takes, the shape of its errors and
whether the fast path answers it. The Gate (service/admission.py), the fast path
(service/hot_path.py) and the error handlers (service/handlers.py) read it from the request's
scope, where the Gate puts it; nothing else keeps a table of paths.

Closed by default: a route that declares no policy stops the app from starting, with a message
naming it. FastAPI's own routes (/openapi.json, /docs, /redoc and their static assets) take
FRAMEWORK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from starlette.routing import BaseRoute, Match
from starlette.staticfiles import StaticFiles

from simclr_embed.service.settings import Settings

# open: never a key (the probes, the page's HTML). any: a key only under REQUIRE_API_KEY.
# read: the API or read key (or the page's session cookie, for GETs) once READ_KEY or
# REQUIRE_API_KEY is set. write: the API key. key: the API or read key, always (trading one
# for a session cookie). service/auth.py says what each asks of a request.
Scope = Literal["open", "any", "read", "write", "key"]
# A list of ids (POST /v1/gallery/delete): max_list_items of them, 256 characters each, every
# one possibly escaped to 6 bytes in JSON.
_ID_BYTES = 256 * 6 + 4
KEY = "simclr_embed.policy"  # where in the ASGI scope the Gate leaves (route, policy)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Policy:
    scope: Scope
    body: Literal["images", "ids"] = "images"  # what the largest body is made of
    openai_errors: bool = False  # errors in OpenAI's shape, for its client
    fast: Callable | None = None  # POST answered by this function, past FastAPI's routing

    def body_limit(self, settings: Settings) -> int:
        if self.body == "ids":
            return settings.max_list_items * _ID_BYTES + 1024
        return settings.max_body_bytes


FRAMEWORK = Policy("any")  # FastAPI's documentation routes
FRAMEWORK_MODULES = ("fastapi", "fastapi_offline")  # where their endpoints are defined
UNMATCHED = Policy("any")  # a 404 or 405: nothing runs


def policy(scope: Scope, **kw: Any) -> Callable[[F], F]:
    """Declares the policy of the route whose endpoint it decorates."""
    def mark(endpoint: F) -> F:
        endpoint.__policy__ = Policy(scope, **kw)  # type: ignore[attr-defined]
        return endpoint
    return mark


class UndeclaredPolicy(RuntimeError):
    pass


def leaf_routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """Routes, with those of included routers in place of the router (FastAPI >= 0.16x keeps
    an included router as one route; our routers have no prefix)."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        yield from leaf_routes(inner) if inner is not None else (route,)


def declared(route: BaseRoute) -> Policy:
    """The route's own policy; FRAMEWORK for the documentation routes FastAPI (and
    fastapi_offline) add and their static files; UndeclaredPolicy for any other."""
    endpoint = getattr(route, "endpoint", None)
    found = getattr(endpoint, "__policy__", None)
    if found is not None:
        return found
    module = getattr(endpoint, "__module__", "").split(".")[0]
    if module in FRAMEWORK_MODULES or isinstance(getattr(route, "app", None), StaticFiles):
        return FRAMEWORK
    where = f" ({endpoint.__module__}.{endpoint.__qualname__})" if endpoint else ""
    methods = ",".join(sorted(getattr(route, "methods", None) or ()))
    raise UndeclaredPolicy(f"route {methods} {getattr(route, 'path', '?')}{where} declares no "
                           "policy: add @policy(...) under its router decorator "
                           "(service/policy.py)")


class Policies:
    """Each request's route and policy, as FastAPI's routing will find the route: paths without
    parameters by a dict lookup (the hot routes), the others in declaration order."""

    def __init__(self) -> None:
        self.by_path: dict[str, list[tuple[BaseRoute, Policy]]] = {}
        self.templated: list[tuple[BaseRoute, Policy]] = []

    def load(self, routes: Sequence[BaseRoute]) -> None:
        """Raises UndeclaredPolicy for a route without one: the app does not start."""
        self.by_path, self.templated = {}, []
        for route in leaf_routes(routes):
            path, entry = getattr(route, "path", "{"), (route, declared(route))
            if "{" in path or not hasattr(route, "methods"):  # a Mount takes what is under it
                self.templated.append(entry)
            else:
                self.by_path.setdefault(path, []).append(entry)

    def resolve(self, scope: dict) -> tuple[BaseRoute | None, Policy]:
        """(the route, its policy); for a method the path does not take, no route and
        UNMATCHED in the error shape of the path's routes (its 405 runs nothing: no key)."""
        partial = UNMATCHED
        for route, found in (*self.by_path.get(scope["path"], ()), *self.templated):
            match = route.matches(scope)[0]
            if match == Match.FULL:
                return route, found
            if match == Match.PARTIAL and found.openai_errors:
                partial = replace(UNMATCHED, openai_errors=True)
        return None, partial


def of(scope: MutableMapping[str, Any]) -> Policy:
    """The request's policy, as the Gate found it."""
    return scope.get(KEY, (None, UNMATCHED))[1]
