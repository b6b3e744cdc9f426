"""A real uvicorn server in a subprocess on 127.0.0.1, over a real bundle exported from a
short-trained checkpoint; tests talk to it over real HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from simclr_embed.benchmarks.process import ServiceProcess

API_KEY = "test-key"


def Server(bundle: Path, data_dir: Path, **env: str) -> ServiceProcess:
    """A service process with the test API key, one thread and ONNX Runtime pinned, so that
    the servers of a test answer alike (provider=auto times its way to either runtime;
    tests/service/test_runtime.py serves on it)."""
    env = {"SIMCLR_EMBED_API_KEY": API_KEY, "SIMCLR_EMBED_THREADS": "1",
           "SIMCLR_EMBED_PROVIDER": "cpu", **env}
    return ServiceProcess(bundle, data_dir, data_dir.parent / "server.log", **env)


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


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")  # lossless: the server sees the exact pixels
    return buf.getvalue()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> Iterator[str]:
    pgserver = pytest.importorskip("pgserver")
    srv = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()


@pytest.fixture
def pg_url(pg_server: str, request) -> str:
    """A fresh database per test on the session's server."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return pg_server.replace("/postgres?", f"/{name}?")
