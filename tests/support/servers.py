"""Real service processes with the tests' settings, the bodies tests send, and the metrics they
read back. The process, the load generators (hey) and the OTLP receiver are the benchmarks'
harness (simclr_embed.benchmarks), shared so that tests and benchmarks start and drive a server
one way; tests take them from here."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from simclr_embed.benchmarks.harness import hey
from simclr_embed.benchmarks.process import ServiceProcess
from simclr_embed.benchmarks.servers.otlp_sink import Receiver, Span

__all__ = ["Receiver", "ServiceProcess", "Span", "hey"]

API_KEY = "test-key"


def Server(bundle: Path, data_dir: Path, **env: str) -> ServiceProcess:
    """A service process with the test API key, one thread and ONNX Runtime pinned, so that
    the servers of a test answer alike (provider=auto times its way to either runtime;
    tests/service/test_runtime.py serves on it)."""
    env = {"SIMCLR_EMBED_API_KEY": API_KEY, "SIMCLR_EMBED_THREADS": "1",
           "SIMCLR_EMBED_PROVIDER": "cpu", **env}
    return ServiceProcess(bundle, data_dir, data_dir.parent / "server.log", **env)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")  # lossless: the server sees the exact pixels
    return buf.getvalue()


def metric(text: str, name: str, labels: str = "") -> float:
    """The sample with exactly these labels; with none given, the sum over every label set
    (the engine's metrics carry a model label)."""
    if labels:
        m = re.search("^" + re.escape(name) + r"\{" + re.escape(labels) + r"\} (\S+)$", text,
                      re.MULTILINE)
        return float(m.group(1)) if m else 0.0
    found = re.findall("^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return sum(map(float, found))


def wait_for_metric(url: str, name: str, done: Callable[[float], bool], labels: str = "",
                    timeout: float = 30.0) -> float:
    """Poll the server's /metrics until `done(value)`; the value, or AssertionError at the
    deadline (which only bounds a hang: no assertion rests on how soon it comes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric(httpx.get(url + "/metrics").text, name, labels)
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{name}{{{labels}}} stayed at {value}"
        time.sleep(0.005)
