"""A real uvicorn server in a subprocess on 127.0.0.1, over a real bundle exported from a
short-trained checkpoint; tests talk to it over real HTTP."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle: Path, data_dir: Path, **env: str) -> None:
        self.bundle, self.data_dir, self.env = bundle, data_dir, env
        self.proc: subprocess.Popen | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {**os.environ, "SIMCLR_EMBED_BUNDLE": str(self.bundle),
               "SIMCLR_EMBED_DATA_DIR": str(self.data_dir), "SIMCLR_EMBED_API_KEY": API_KEY,
               "SIMCLR_EMBED_THREADS": "1", "SIMCLR_EMBED_PORT": str(self.port), **self.env}
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: see {self.log.name}"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not become ready in 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Signal the server, wait for it to exit, and return its log."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.log.close()
        return Path(self.log.name).read_text()


@pytest.fixture(scope="session")
def server(bundle_dir: Path, tmp_path_factory) -> Iterator[Server]:
    srv = Server(bundle_dir, tmp_path_factory.mktemp("srv") / "data",
                 SIMCLR_EMBED_MAX_BODY_BYTES=str(2 * 2**20)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")  # lossless: the server sees the exact pixels
    return buf.getvalue()
