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
    """A service process with the test API key and one ORT thread."""
    env = {"SIMCLR_EMBED_API_KEY": API_KEY, "SIMCLR_EMBED_THREADS": "1", **env}
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
