"""A real uvicorn server in a subprocess on 127.0.0.1, over a real bundle exported from a
short-trained checkpoint; tests talk to it over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pgserver
import psycopg
import pytest

from tests.support.servers import Server, ServiceProcess


@pytest.fixture(scope="session")
def server(bundle_dir: Path, tmp_path_factory) -> Iterator[ServiceProcess]:
    srv = Server(bundle_dir, tmp_path_factory.mktemp("srv") / "data",
                 SIMCLR_EMBED_MAX_BODY_BYTES=str(2 * 2**20)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


PG_LIMITS = "&connect_timeout=30&options=-c%20statement_timeout%3D300s%20-c%20lock_timeout%3D60s"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> Iterator[str]:
    srv = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()


@pytest.fixture
def pg_url(pg_server: str, request) -> str:
    """A fresh database per test on the session's server."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    # A wait on the database is bounded (libpq's own timeouts): a hung statement fails its
    # test naming the query, where a thread blocked in libpq never sees pytest-timeout's alarm.
    return pg_server.replace("/postgres?", f"/{name}?") + PG_LIMITS
